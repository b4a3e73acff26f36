"""The torch path of CoupledNMF and its solvers, run on the CPU.

The solver functions of ``sklearn_peek._solvers`` run unchanged on NumPy
arrays and on torch tensors; here the torch runs (``device=torch.device("cpu")``
or torch tensor input) are compared with the NumPy runs from the same
``random_state``: float64 to rounding, float32 to float32 tolerance.
"""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from _helpers import fit_quietly, solver_kinds, spy_solvers
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline

from sklearn_peek import CoupledNMF, LayerActivationExtractor, _solvers
from sklearn_peek._backend import select_compute_device

CPU = torch.device("cpu")


def _data(seed=0, n=40, widths=(25, 60), rank=4, dtype=np.float64):
    rng = np.random.RandomState(seed)
    W = rng.rand(n, rank)
    blocks = [(1 + 9 * i) * W @ rng.rand(rank, w) for i, w in enumerate(widths)]
    X = np.hstack(blocks) * rng.uniform(0.95, 1.05, size=(n, sum(widths)))
    return X.astype(dtype), [(f"b{i}", w) for i, w in enumerate(widths)]


CASES = [
    {"solver": "hals"},
    {"solver": "hals", "init": "random"},
    {"solver": "hals", "init": "nndsvd", "alpha_W": 1e-3, "l1_ratio": 0.5},
    {"solver": "hals", "block_weights": [1.0, 0.0]},  # passive block
    {"solver": "mu"},
    {"solver": "mu", "init": "nndsvdar", "alpha_W": 1e-3, "alpha_H": 2e-3},
    {"solver": "mu", "beta_loss": "kullback-leibler"},
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c.values())))
def test_torch_cpu_matches_numpy_float64(case, monkeypatch):
    calls = spy_solvers(monkeypatch)
    X, blocks = _data()
    kw = dict(n_components=4, blocks=blocks, random_state=0, max_iter=60, **case)
    ref, W_ref = fit_quietly(X, **kw)
    assert solver_kinds(calls) == {"numpy"}
    mod, W = fit_quietly(X, device=CPU, **kw)
    assert solver_kinds(calls) == {"torch"}  # the comparison is torch vs NumPy
    # NumPy in: NumPy out, even though the torch solvers ran.
    assert isinstance(W, np.ndarray) and W.dtype == np.float64
    assert mod.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(W, W_ref, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(mod.components_, ref.components_, rtol=1e-9, atol=1e-11)
    assert mod.reconstruction_err_ == pytest.approx(ref.reconstruction_err_, rel=1e-9)
    for name in ref.block_names_:
        assert mod.block_reconstruction_err_[name] == pytest.approx(
            ref.block_reconstruction_err_[name], rel=1e-9
        )
    X_new, _ = _data(seed=1)
    np.testing.assert_allclose(
        mod.transform(X_new), ref.transform(X_new), rtol=1e-8, atol=1e-11
    )
    assert mod.score(X_new) == pytest.approx(ref.score(X_new), rel=1e-8)


@pytest.mark.parametrize("solver", ["hals", "mu"])
def test_torch_tensor_float32_matches_numpy(solver):
    X, blocks = _data(seed=2, dtype=np.float32)
    kw = dict(n_components=4, blocks=blocks, random_state=3, solver=solver)
    ref, W_ref = fit_quietly(X, max_iter=300, **kw)
    mod, W = fit_quietly(torch.from_numpy(X), max_iter=300, **kw)
    assert isinstance(W, torch.Tensor) and W.dtype == torch.float32
    assert mod.components_.dtype == np.float32
    assert isinstance(mod.components_, np.ndarray)
    # float32 rounding differs between BLAS libraries: iterates drift slowly,
    # the objective reached agrees to float32 accuracy.
    assert abs(mod.n_iter_ - ref.n_iter_) <= max(3, ref.n_iter_ // 10)
    assert mod.reconstruction_err_ == pytest.approx(ref.reconstruction_err_, rel=1e-3)
    rel = np.linalg.norm(W.numpy() @ mod.components_ - W_ref @ ref.components_)
    assert rel / np.linalg.norm(X) < 1e-3


def test_tensor_in_tensor_out_and_attributes_numpy():
    X, blocks = _data()
    Xt = torch.from_numpy(X)
    model, W = fit_quietly(Xt, n_components=3, blocks=blocks, random_state=0)
    assert isinstance(W, torch.Tensor) and W.dtype == torch.float64
    assert W.shape == (X.shape[0], 3)
    for attr in ("components_", "block_weights_"):
        assert isinstance(getattr(model, attr), np.ndarray)
    assert isinstance(model.reconstruction_err_, float)
    assert not hasattr(model, "feature_names_in_")
    assert model.n_features_in_ == X.shape[1]
    Wt = model.transform(Xt)
    assert isinstance(Wt, torch.Tensor)
    np.testing.assert_allclose(Wt.numpy(), model.transform(X), rtol=1e-8, atol=1e-12)
    Xr = model.inverse_transform(Wt)
    assert isinstance(Xr, torch.Tensor) and Xr.shape == X.shape
    np.testing.assert_allclose(Xr.numpy(), model.inverse_transform(Wt.numpy()))
    sub = model.transform(Xt[:, :25], blocks=["b0"])
    np.testing.assert_allclose(
        sub.numpy(), model.transform(X[:, :25], blocks=["b0"]), rtol=1e-8, atol=1e-12
    )
    assert model.score(Xt) == pytest.approx(model.score(X), rel=1e-10)
    # Pickles and clones without tensors inside.
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_allclose(again.transform(X), model.transform(X))
    assert clone(model).get_params()["device"] is None


def test_device_rule():
    Xn = np.ones((3, 2))
    Xt = torch.ones(3, 2)
    assert select_compute_device(None, Xn) is None
    assert select_compute_device(None, Xt) == Xt.device
    assert select_compute_device("cpu", Xn) is None
    assert select_compute_device("cpu", Xt) == CPU
    assert select_compute_device(CPU, Xn) == CPU
    if not torch.cuda.is_available():
        assert select_compute_device("auto", Xn) is None
        with pytest.raises(ValueError, match=r"device='cuda:0' asks for a CUDA GPU"):
            select_compute_device("cuda:0", Xn)
        with pytest.raises(ValueError, match=r"device='cuda' asks for a CUDA GPU"):
            CoupledNMF(2, device="cuda").fit(Xn + 1)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (torch.float64, torch.float64),
        (torch.float32, torch.float32),
        (torch.float16, torch.float32),
        (torch.int64, torch.float32),
    ],
)
def test_tensor_dtypes(dtype, expected):
    X = torch.from_numpy(np.random.RandomState(0).randint(0, 5, (12, 7)))
    model, W = fit_quietly(X.to(dtype), n_components=2, random_state=0, max_iter=20)
    assert W.dtype == expected
    assert model.components_.dtype == np.dtype(str(expected).split(".")[1])


def test_transform_returns_the_fitted_models_dtype():
    # gpu.rst: "transform gives the dtype of the fitted model, for tensors as
    # for NumPy arrays: a model fitted in float64 returns float64 for float32"
    X, blocks = _data(dtype=np.float64)
    new = torch.from_numpy(X[:5])
    for fit_dtype in (np.float64, np.float32):
        model, _ = fit_quietly(
            X.astype(fit_dtype), n_components=3, blocks=blocks, random_state=0
        )
        want = torch.float64 if fit_dtype == np.float64 else torch.float32
        for given in (torch.float32, torch.float64):
            W = model.transform(new.to(given))
            assert isinstance(W, torch.Tensor) and W.dtype == want
            assert model.transform(new.to(given).numpy()).dtype == fit_dtype


def test_float32_stays_float32_on_torch_cpu(monkeypatch):
    calls = spy_solvers(monkeypatch)
    X, blocks = _data(dtype=np.float32)
    model, W = fit_quietly(X, n_components=3, blocks=blocks, device=CPU, random_state=0)
    assert solver_kinds(calls) == {"torch"}
    assert W.dtype == np.float32 and model.components_.dtype == np.float32


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (float("nan"), r"argument X has X\[2, 3\] = nan"),
        (float("inf"), r"X contains infinity.*X\[2, 3\] = inf"),
        (-1.5, r"Negative values .*argument X: X\[2, 3\] = -1\.5"),
    ],
)
def test_bad_tensor_values(bad, match):
    X = torch.rand(6, 5, generator=torch.Generator().manual_seed(0))
    X[2, 3] = bad
    with pytest.raises(ValueError, match=match):
        CoupledNMF(2).fit(X)
    model = CoupledNMF(2, random_state=0).fit(torch.rand(6, 5))
    with pytest.raises(ValueError, match=match):
        model.transform(X)


def test_bad_tensor_shapes_and_sparse():
    with pytest.raises(ValueError, match=r"argument X must be 2-D.*shape \(2, 3, 4\)"):
        CoupledNMF(2).fit(torch.ones(2, 3, 4))
    model = CoupledNMF(2, blocks=[2, 3], random_state=0).fit(torch.rand(6, 5) + 0.1)
    with pytest.raises(ValueError, match=r"shape \(6, 4\).*expects 5 features"):
        model.transform(torch.rand(6, 4))
    with pytest.raises(ValueError, match=r"blocks=\['block1'\] expects 3 features"):
        model.transform(torch.rand(6, 2), blocks=["block1"])
    with pytest.raises(ValueError, match=r"inverse_transform: .*shape \(3, 5\)"):
        model.inverse_transform(torch.ones(3, 5))
    with pytest.raises(ValueError, match=r"shape \(0, 2\); expected .*n_samples >= 1"):
        model.inverse_transform(torch.ones(0, 2))
    meta = torch.empty(6, 5, device="meta")
    for est in (CoupledNMF(2), CoupledNMF(2, device="cpu")):
        with pytest.raises(ValueError, match=r"on device 'meta'; expected a CPU"):
            est.fit(meta)
    # a tensor W is checked as an array is: the first bad entry named
    W_bad = torch.ones(4, 2)
    W_bad[3, 1] = float("inf")
    with pytest.raises(
        ValueError,
        match=r"CoupledNMF.inverse_transform argument X \(the sample factor W\) "
        r"has X\[3, 1\] = inf",
    ):
        model.inverse_transform(W_bad)
    Xs = sp.random(20, 8, density=0.5, format="csr", random_state=0)
    with pytest.raises(ValueError, match=r"scipy sparse matrix .* dense"):
        CoupledNMF(2, device=CPU).fit(Xs)


def test_custom_init_tensors_warm_start():
    X, blocks = _data()
    ref, W_ref = fit_quietly(
        X, n_components=3, blocks=blocks, random_state=0, max_iter=30
    )
    kw = dict(n_components=3, blocks=blocks, init="custom", max_iter=10)
    a, b = CoupledNMF(**kw), CoupledNMF(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        Wa = a.fit_transform(X, W=W_ref, H=ref.components_)
        H0 = torch.from_numpy(ref.components_)
        Wb = b.fit_transform(torch.from_numpy(X), W=torch.from_numpy(W_ref), H=H0)
    np.testing.assert_allclose(Wb.numpy(), Wa, rtol=1e-9, atol=1e-12)
    assert b.n_iter_ == a.n_iter_


def test_solver_functions_on_tensors_with_penalties():
    """The per-column L2 branch of the HALS sweep and solve_w, directly."""
    X, _ = _data(seed=4)
    rng = np.random.RandomState(0)
    W0, H0 = rng.rand(X.shape[0], 4), rng.rand(4, X.shape[1])
    d = np.r_[np.full(25, 2.0), np.full(60, 0.25)]
    xnorm = float((X * X).sum(axis=0) @ d)
    kw = dict(xnorm=xnorm, l1_W=0.1, l2_W=0.2, l1_H=0.3, l2_H=0.4, max_iter=25)
    T = torch.from_numpy
    for fit in (_solvers.fit_hals, _solvers.fit_mu):
        Wn, Hn, it_n, info_n = fit(X, W0, H0, d, **kw)
        Wt, Ht, it_t, info_t = fit(T(X), T(W0), T(H0), T(d), **kw)
        assert it_t == it_n
        np.testing.assert_allclose(Wt.numpy(), Wn, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(Ht.numpy(), Hn, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(info_t["objective"], info_n["objective"], rtol=1e-10)
    Wn, sn = _solvers.solve_w(X, Hn, d, l1_W=0.1)
    Wt, st = _solvers.solve_w(T(X), T(Hn), T(d), l1_W=0.1)
    assert st == sn
    np.testing.assert_allclose(Wt.numpy(), Wn, rtol=1e-9, atol=1e-12)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_rank_deficient_w_solves_start_from_the_same_pseudo_inverse():
    # 40 components on rank-3 data: the Gram matrix of H has singular values
    # between NumPy's pinv cutoff (1e-15 of the largest) and torch's default
    # (40 eps); with different cutoffs the two paths' transforms differed by
    # 17%, with the same one they stay within the problem's own rounding
    for seed in (0, 1):
        rng = np.random.RandomState(seed)
        X = rng.rand(60, 3) @ rng.rand(3, 40)
        model = CoupledNMF(40, blocks=[20, 12, 8], random_state=0).fit(X)
        ref = model.transform(X)
        got = model.set_params(device=CPU).transform(X)
        assert np.abs(got - ref).max() < 2e-2 * np.abs(ref).max()


def test_init_sketch_same_on_both_backends():
    X, _ = _data(seed=5, n=60, widths=(30, 90), rank=6)
    s = np.linspace(0.5, 2.0, X.shape[1])
    Un, Sn, Vn = _solvers.randomized_svd_weighted(X, s, 5, np.random.RandomState(7))
    Ut, St, Vt = _solvers.randomized_svd_weighted(
        torch.from_numpy(X), torch.from_numpy(s), 5, np.random.RandomState(7)
    )
    np.testing.assert_allclose(St.numpy(), Sn, rtol=1e-10)
    # Singular vectors up to a joint sign: compare the rank-5 products.
    np.testing.assert_allclose(
        (Ut * St) @ Vt, (Un * Sn) @ Vn, rtol=1e-8, atol=1e-10 * np.abs(X).max()
    )


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(3 * 6 * 6, 5),
        torch.nn.ReLU(),
    )


def test_pipeline_on_torch_device_matches_numpy(monkeypatch):
    calls = spy_solvers(monkeypatch)
    X = np.random.RandomState(0).rand(30, 64).astype(np.float32)
    ext = LayerActivationExtractor(_net(), input_shape=(1, 8, 8)).fit(X)
    blocks = ext.block_sizes_
    kw = dict(n_components=3, blocks=blocks, random_state=0, max_iter=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe_t = make_pipeline(
            LayerActivationExtractor(_net(), input_shape=(1, 8, 8), device=CPU),
            CoupledNMF(device=CPU, **kw),
        )
        W_t = pipe_t.fit_transform(X)
        assert solver_kinds(calls) == {"torch"}
        pipe_n = make_pipeline(
            LayerActivationExtractor(_net(), input_shape=(1, 8, 8)), CoupledNMF(**kw)
        )
        W_n = pipe_n.fit_transform(X)
    assert isinstance(W_t, np.ndarray) and W_t.dtype == np.float32
    err_t = pipe_t[-1].reconstruction_err_
    assert err_t == pytest.approx(pipe_n[-1].reconstruction_err_, rel=1e-3)
    assert np.linalg.norm(W_t - W_n) / np.linalg.norm(W_n) < 1e-2


def _signed_net():
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3),
        torch.nn.ReLU(inplace=True),
        torch.nn.Conv2d(3, 2, 3),  # signed output
        torch.nn.Flatten(),
        torch.nn.Linear(2 * 4 * 4, 5),
    )


@pytest.mark.parametrize(
    ("nonneg", "pooling"),
    [("error", None), ("relu", "max"), ("split", "avg"), ("shift", None)],
)
def test_extractor_output_torch_matches_numpy(nonneg, pooling):
    X = np.random.RandomState(0).rand(21, 1, 8, 8).astype(np.float32)
    net = _net() if nonneg == "error" else _signed_net()
    layers = "auto" if nonneg == "error" else ["1", "2", "4"]
    kw = dict(layers=layers, nonneg=nonneg, pooling=pooling, batch_size=8)
    ref = LayerActivationExtractor(net, **kw).fit(X)
    ext = LayerActivationExtractor(net, output="torch", device=CPU, **kw).fit(X)
    A = ext.transform(X)
    assert isinstance(A, torch.Tensor) and A.dtype == torch.float32
    assert A.device == CPU and tuple(A.shape) == (21, ref.n_features_out_)
    np.testing.assert_allclose(A.numpy(), ref.transform(X), rtol=1e-6, atol=1e-6)


def test_extractor_output_torch_errors():
    X = np.random.RandomState(0).rand(5, 64).astype(np.float32)
    ext = LayerActivationExtractor(_net(), input_shape=(1, 8, 8), output="tensor")
    with pytest.raises(ValueError, match=r"'output' parameter.*Got 'tensor'"):
        ext.fit(X)
    ext.set_params(output="torch").fit(X)
    with pytest.raises(ValueError, match=r"out= is a NumPy buffer"):
        ext.transform(X, out=np.empty((5, ext.n_features_out_), np.float32))
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"X has NaN or infinite values .*sample 3"):
        ext.transform(bad)


def test_pipeline_output_torch_stays_torch():
    X = np.random.RandomState(0).rand(30, 64).astype(np.float32)
    blocks = LayerActivationExtractor(_net(), input_shape=(1, 8, 8)).fit(X).block_sizes_
    kw = dict(n_components=3, blocks=blocks, random_state=0, max_iter=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe = make_pipeline(
            LayerActivationExtractor(
                _net(), input_shape=(1, 8, 8), device=CPU, output="torch"
            ),
            CoupledNMF(**kw),  # device=None follows the tensor
        )
        W = pipe.fit_transform(X)
        ref = make_pipeline(
            LayerActivationExtractor(_net(), input_shape=(1, 8, 8)), CoupledNMF(**kw)
        )
        W_ref = ref.fit_transform(X)
    assert isinstance(W, torch.Tensor) and W.device == CPU
    assert np.linalg.norm(W.numpy() - W_ref) / np.linalg.norm(W_ref) < 1e-2
    assert pipe[-1].reconstruction_err_ == pytest.approx(
        ref[-1].reconstruction_err_, rel=1e-3
    )
    assert isinstance(pipe.transform(X[:4]), torch.Tensor)
    rec = pipe[-1].inverse_transform(W)
    assert isinstance(rec, torch.Tensor)
    np.testing.assert_allclose(rec.numpy(), pipe[-1].inverse_transform(W.numpy()))


def test_rank_scorer_on_torch_device_matches_numpy(monkeypatch):
    from sklearn_peek import RankQualityScorer

    calls = spy_solvers(monkeypatch)
    rng = np.random.default_rng(0)
    W = rng.random((60, 3)) ** 2
    X = W @ rng.random((3, 70)) ** 2
    X = np.abs(X + 0.2 * X.std() * rng.standard_normal(X.shape))
    kw = dict(blocks=[("input", 20), ("conv1", 50)], ranks=range(1, 5), cv=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = RankQualityScorer(random_state=0, **kw).fit(X)
        assert solver_kinds(calls) == {"numpy"}
        # n_jobs=2 asks for processes; a torch device runs the fits in this
        # process (one CUDA context on a GPU), with the same results.
        sc = RankQualityScorer(random_state=0, device=CPU, n_jobs=2, **kw).fit(X)
        assert solver_kinds(calls) == {"torch"}
    assert sc.rank_ == ref.rank_
    np.testing.assert_allclose(
        sc.cv_results_["mean_score"], ref.cv_results_["mean_score"], rtol=1e-7
    )


def test_extractor_output_torch_onnx_model():
    from _onnx_helpers import CURRENT, make_lenet

    X = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
    kw = dict(layers=["p1", "r3"], batch_size=2)
    model = make_lenet(CURRENT)
    ref = LayerActivationExtractor(model, **kw).fit(X)
    A = LayerActivationExtractor(model, output="torch", **kw).fit(X).transform(X)
    assert isinstance(A, torch.Tensor) and A.device == CPU
    np.testing.assert_allclose(A.numpy(), ref.transform(X), rtol=1e-6, atol=1e-6)


def test_torch_threads_sets_and_restores_the_count_also_after_an_error():
    from sklearn_peek._backend import torch_threads

    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with pytest.raises(RuntimeError, match="inside"):
        with torch_threads(target):
            assert torch.get_num_threads() == target
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before


_OVERLAPPING_BLOCKS = """
import threading, time, torch
from threadpoolctl import threadpool_info
from sklearn_peek._backend import single_threaded

def counts():
    return torch.get_num_threads(), [p["num_threads"] for p in threadpool_info()]

def job(seconds):
    with single_threaded():
        time.sleep(seconds)

before = counts()
for _ in range(3):  # the first block ends while the second still runs
    threads = [threading.Thread(target=job, args=(s,)) for s in (0.05, 0.15)]
    threads[0].start()
    time.sleep(0.02)
    threads[1].start()
    for t in threads:
        t.join()
with single_threaded(), single_threaded():  # nested
    inside = counts()
print(repr((before, counts(), inside)))
"""


def test_single_threaded_blocks_that_overlap_in_threads_share_one_limit():
    # run_case_study's networks under joblib's threading backend: BLAS and
    # torch thread counts belong to the process, so a job that saved them on
    # entry and restored them on exit could restore the "1" another job had
    # set, leaving the process single-threaded for good (OpenBLAS at 1 after
    # the run). A fresh process, at two threads (pytest's runs at one).
    import ast
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.endswith("NUM_THREADS")}
    env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = "2"
    out = subprocess.run(
        [sys.executable, "-c", _OVERLAPPING_BLOCKS],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    before, after, inside = ast.literal_eval(out.strip())
    assert before[0] == 2 and max(before[1]) == 2
    assert after == before
    assert inside[0] == 1 and set(inside[1]) == {1}


@pytest.mark.parametrize(
    "version, ok",
    [("2.2.0", False), ("2.3.1", False), ("3.0.0", True), ("3.6.0+git9a1b2c", True),
     ("10.1", True), ("dev", False)],
)  # fmt: skip
def test_gpu_kernels_need_triton_3(version, ok):
    from sklearn_peek._gpu_kernels import _supported_triton

    assert _supported_triton(version) is ok
