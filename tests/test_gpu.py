"""CUDA-only checks of the torch path (skipped where torch sees no GPU).

The same comparisons as tests/test_torch_backend.py, on a real GPU: results
against the NumPy path from the same random_state, what comes back where,
the dtype and TF32 policy, and a Pipeline that keeps its data on the device.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from _helpers import fit_quietly
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline

from sklearn_peek import CoupledNMF, LayerActivationExtractor

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"
)


def _triton_3():
    try:
        import triton
    except ImportError:
        return False
    from sklearn_peek._gpu_kernels import _supported_triton

    return _supported_triton(triton.__version__)


# the Triton kernels are built with Triton 3.0 and later only (torch 2.2 and
# 2.3 ship Triton 2.x; the eager code runs there)
needs_kernels = pytest.mark.skipif(not _triton_3(), reason="needs Triton >= 3.0")


def _data(dtype=np.float32, seed=0):
    rng = np.random.RandomState(seed)
    W = rng.rand(80, 4)
    X = np.hstack([W @ rng.rand(4, 30), 20 * W @ rng.rand(4, 120)])
    X *= rng.uniform(0.95, 1.05, size=X.shape)
    return X.astype(dtype), [("a", 30), ("b", 120)]


@pytest.mark.parametrize("solver", ["hals", "mu"])
def test_cuda_matches_numpy(solver):
    X, blocks = _data()
    kw = dict(n_components=4, blocks=blocks, random_state=0, solver=solver)
    ref, W_ref = fit_quietly(X, max_iter=300, **kw)
    mod, W = fit_quietly(X, device="cuda", max_iter=300, **kw)
    assert isinstance(W, np.ndarray) and W.dtype == np.float32
    assert mod.reconstruction_err_ == pytest.approx(ref.reconstruction_err_, rel=1e-3)
    P = W @ mod.components_
    P_ref = W_ref @ ref.components_
    assert np.linalg.norm(P - P_ref) / np.linalg.norm(P_ref) < 1e-3


def test_cuda_float64_numpy_is_computed_in_float32():
    X, blocks = _data(np.float64)
    mod, W = fit_quietly(
        X, n_components=3, blocks=blocks, device="cuda", random_state=0
    )
    assert W.dtype == np.float32 and mod.components_.dtype == np.float32


def test_cuda_tensors_stay_on_the_device():
    X, blocks = _data(np.float64)
    Xt = torch.from_numpy(X).cuda()
    mod, W = fit_quietly(Xt, n_components=3, blocks=blocks, random_state=0)
    assert W.is_cuda and W.dtype == torch.float64  # float64 tensors: kept
    assert isinstance(mod.components_, np.ndarray)
    assert mod.transform(Xt).is_cuda
    assert mod.inverse_transform(W).is_cuda
    assert mod.score(Xt) == pytest.approx(mod.score(X), rel=1e-6)


def test_tf32_left_as_the_user_set_it():
    X, blocks = _data()
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        for setting in (True, False):  # the fit neither sets nor clears it
            torch.backends.cuda.matmul.allow_tf32 = setting
            fit_quietly(X, n_components=3, blocks=blocks, device="cuda", random_state=0)
            assert torch.backends.cuda.matmul.allow_tf32 is setting
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_auto_picks_the_gpu():
    from sklearn_peek._backend import select_compute_device

    X, blocks = _data()
    Xt = torch.from_numpy(X)
    assert select_compute_device("auto", Xt).type == "cuda"
    _, W = fit_quietly(Xt, n_components=3, blocks=blocks, device="auto", random_state=0)
    # Tensors come back on the caller's device, wherever the solvers ran.
    assert not W.is_cuda


def test_pipeline_on_gpu_keeps_tensors_there():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten()
    )
    X = np.random.RandomState(0).rand(40, 1, 8, 8).astype(np.float32)
    blocks = LayerActivationExtractor(net).fit(X).block_sizes_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe = make_pipeline(
            LayerActivationExtractor(net, device="cuda", output="torch"),
            CoupledNMF(3, blocks=blocks, random_state=0),
        )
        W = pipe.fit_transform(X)
        # the same pipeline on the CPU, for the values
        cpu = make_pipeline(
            LayerActivationExtractor(net), CoupledNMF(3, blocks=blocks, random_state=0)
        )
        W_cpu = cpu.fit_transform(X)
    assert W.is_cuda
    assert next(net.parameters()).device.type == "cpu"  # moved back
    err, err_cpu = pipe[-1].reconstruction_err_, cpu[-1].reconstruction_err_
    assert err == pytest.approx(err_cpu, rel=1e-3)
    W = W.cpu().numpy()
    assert np.linalg.norm(W - W_cpu) / np.linalg.norm(W_cpu) < 1e-2


def test_extractor_device_changed_after_fit_is_where_transform_runs():
    # extraction.rst: device may change after fit, and transform runs there
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten()
    )
    X = np.random.RandomState(0).rand(10, 1, 8, 8).astype(np.float32)
    ext = LayerActivationExtractor(net, output="torch").fit(X)
    on_cpu = ext.transform(X)
    assert on_cpu.device.type == "cpu"
    ext.set_params(device="cuda")
    on_gpu = ext.transform(X)
    assert on_gpu.is_cuda
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-4, atol=1e-5)
    ext.set_params(device="cpu")
    assert ext.transform(X).device.type == "cpu"
    assert next(net.parameters()).device.type == "cpu"  # moved back each time


def test_rank_scorer_on_cuda_matches_cpu():
    from sklearn_peek import RankQualityScorer

    X, blocks = _data(np.float64)
    blocks = [("input", blocks[0][1]), ("layer", blocks[1][1])]
    kw = dict(blocks=blocks, ranks=range(1, 6), cv=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = RankQualityScorer(**kw).fit(X)
        sc = RankQualityScorer(device="cuda", n_jobs=4, **kw).fit(X)
    assert sc.rank_ == ref.rank_
    np.testing.assert_allclose(
        sc.cv_results_["mean_score"], ref.cv_results_["mean_score"], rtol=1e-4
    )


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("r", [1, 7, 20, 64])
def test_compiled_sweep_kernel_matches_eager(dtype, r):
    from sklearn_peek import _gpu_kernels, _solvers

    g = torch.Generator(device="cuda").manual_seed(r)
    m = 1000
    A = torch.rand(r, m, generator=g, device="cuda", dtype=dtype)
    B = torch.rand(r, 2 * r, generator=g, device="cuda", dtype=dtype)
    G = B @ B.T
    num = r * torch.rand(m, r, generator=g, device="cuda", dtype=dtype).T
    l2 = torch.rand(m, generator=g, device="cuda", dtype=dtype)
    for l1_, l2_ in ((0.0, 0.0), (0.05, 0.2), (0.0, l2)):
        assert _gpu_kernels.usable(A, num, G)
        fused, eager = A.clone(), A.clone()
        _gpu_kernels.sweep(fused, num, G, l1_, l2_)
        _solvers._hals_sweep_eager(eager, num, G, l1_, l2_)
        tol = 1e-12 if dtype == torch.float64 else 2e-5
        assert (eager - A).abs().max() > 1e-3
        torch.testing.assert_close(fused, eager, rtol=tol, atol=tol)


@needs_kernels
def test_compiled_residual_kernel_matches_float64():
    from sklearn_peek import _gpu_kernels

    g = torch.Generator(device="cuda").manual_seed(0)
    X = torch.rand(3000, 2500, generator=g, device="cuda")
    W = torch.rand(3000, 20, generator=g, device="cuda")
    H = torch.rand(20, 2500, generator=g, device="cuda")
    d = torch.rand(2500, generator=g, device="cuda")
    R = X.double() - W.double() @ H.double()
    ref = float(((R * R) @ d.double()).sum())
    for Wt in (W.T, W.T.contiguous()):
        assert _gpu_kernels.residual_usable(X, Wt, H, d)
        for dot in (True, False):
            for block in ((64, 128), (128, 128), (64, 256)):
                got = float(
                    _gpu_kernels.weighted_residual(X, Wt, H, d, dot=dot, block=block)
                )
                assert got == pytest.approx(ref, rel=1e-5)


def test_rank_scorer_batched_on_cuda_matches_cpu():
    from sklearn_peek import RankQualityScorer

    X, blocks = _data(np.float64)
    blocks = [("input", blocks[0][1]), ("layer", blocks[1][1])]
    kw = dict(blocks=blocks, ranks=range(1, 7), cv=2, random_state=0, warm_start=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = RankQualityScorer(**kw).fit(X)
        sc = RankQualityScorer(device="cuda", **kw).fit(X)
    assert sc.n_tasks_ == 2  # one stacked run per fold
    assert sc.rank_ == ref.rank_
    np.testing.assert_allclose(
        sc.cv_results_["mean_score"], ref.cv_results_["mean_score"], rtol=1e-4
    )


@needs_kernels
@pytest.mark.parametrize("sizes", [[1, 5, 20, 30, 2], list(range(1, 31))])
def test_compiled_stacked_sweep_matches_eager(sizes):
    from sklearn_peek import _gpu_kernels, _solvers

    g = torch.Generator(device="cuda").manual_seed(3)
    R, m = sum(sizes), 3000
    A = torch.rand(R, m, generator=g, device="cuda")
    B = torch.rand(R, 2 * R, generator=g, device="cuda")
    mask = torch.block_diag(*[torch.ones(s, s, device="cuda") for s in sizes])
    G = (B @ B.T) * mask
    num = R * torch.rand(m, R, generator=g, device="cuda").T
    stacked, eager = A.clone(), A.clone()
    _gpu_kernels.sweep_stacked(stacked, num, G, _gpu_kernels.stack_layout(sizes, A))
    _solvers._hals_sweep_eager(eager, num, G, 0.0, 0.0)
    assert (eager - A).abs().max() > 1e-3
    torch.testing.assert_close(stacked, eager, rtol=2e-5, atol=2e-5)


@needs_kernels
def test_compiled_stacked_residuals_match_float64():
    from sklearn_peek import _gpu_kernels

    g = torch.Generator(device="cuda").manual_seed(6)
    n, p, sizes = 2000, 3000, [1, 9, 20, 30]
    X = torch.rand(n, p, generator=g, device="cuda")
    Wt = torch.rand(sum(sizes), n, generator=g, device="cuda")
    H = torch.rand(sum(sizes), p, generator=g, device="cuda")
    d = torch.rand(p, generator=g, device="cuda")
    assert _gpu_kernels.residual_usable(X, Wt, H, d, stacked=True)
    got = _gpu_kernels.weighted_residuals_stacked(
        X, Wt, H, d, _gpu_kernels.stack_layout(sizes, X)
    ).tolist()
    at = 0
    for s, value in zip(sizes, got):
        R = X.double() - Wt[at : at + s].T.double() @ H[at : at + s].double()
        assert value == pytest.approx(float(((R * R) @ d.double()).sum()), rel=1e-5)
        at += s


def test_solve_w_batched_on_cuda_matches_numpy():
    # float32 on the GPU (the stacked sweep kernel) against float64 NumPy.
    from sklearn_peek import _solvers

    rng = np.random.default_rng(5)
    X = rng.random((500, 300))
    d = rng.random(300) + 0.5
    Hs = [rng.random((r, 300)) for r in range(1, 21)]
    cast = dict(device="cuda", dtype=torch.float32)
    got = _solvers.solve_w_batched(
        torch.as_tensor(X, **cast),
        [torch.as_tensor(H, **cast) for H in Hs],
        torch.as_tensor(d, **cast),
        max_iter=200,
        tol=1e-4,
    )
    for H, (W, _) in zip(Hs, got):
        W_ref, _ = _solvers.solve_w(X, H, d, max_iter=200, tol=1e-4)
        err = np.linalg.norm(X - W.double().cpu().numpy() @ H)
        err_ref = np.linalg.norm(X - W_ref @ H)
        assert err == pytest.approx(err_ref, rel=1e-3)


def test_stacked_sketches_on_cuda_match_numpy():
    # The batched CholeskyQR2 and Gram-eigenvector SVD (the CUDA default)
    # against one NumPy float64 sketch per rank: the truncated SVD products,
    # tightly in float64, to float32 rounding in float32. (The NNDSVD starts
    # built from them have discrete choices that float32 can flip on
    # noise-level components, so the sketch is what is compared.)
    from sklearn_peek import _solvers

    X, _ = _data(np.float64, seed=3)
    s = np.linspace(0.5, 2.0, X.shape[1])
    ks = list(range(1, 21))

    def rngs():
        return [np.random.RandomState(k) for k in ks]

    ref = _solvers.randomized_svds_weighted(X, s, ks, rngs())
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        cast = dict(device="cuda", dtype=dtype)
        got = _solvers.randomized_svds_weighted(
            torch.as_tensor(X, **cast), torch.as_tensor(s, **cast), ks, rngs()
        )
        U, S, Vt = (a.double().cpu().numpy() for a in got)
        Ur, Sr, Vr = ref
        at = 0
        for k in ks:
            sl = slice(at, at + k)
            at += k
            P = (U[:, sl] * S[sl]) @ Vt[sl]
            P_ref = (Ur[:, sl] * Sr[sl]) @ Vr[sl]
            assert np.abs(P - P_ref).max() <= tol * Sr[sl][0], (dtype, k)


def test_batched_orthonormalization_on_cuda_flags_what_it_cannot_take():
    from sklearn_peek import _solvers

    rng = np.random.RandomState(0)
    generic = rng.rand(60, 6)
    deficient = np.hstack([rng.rand(60, 2)] * 2)
    Y = torch.as_tensor(np.hstack([generic, deficient]), device="cuda")
    blocks = _solvers._Blocks([6, 4], Y, batched=True)
    Q, ok = _solvers._orth_blocks(Y, blocks)
    assert ok.tolist() == [True, False]
    Q6 = Q[:, :6].cpu().numpy()
    np.testing.assert_allclose(Q6.T @ Q6, np.eye(6), atol=1e-13)


@needs_kernels
def test_syncs_per_iteration_on_cuda_within_budget():
    # The compiled kernels: one host read per iteration (see test_host_syncs.py).
    from _syncs import KERNEL_BUDGET, rates

    got = rates(torch.device("cuda"))
    assert {name: rate for name, (rate, _) in got.items()} == KERNEL_BUDGET, got


@needs_kernels
def test_cuda_sync_debug_mode_sees_one_sync_per_hals_iteration():
    # torch's own count of the synchronisations (every read back and every
    # blocking copy, both ways), which the CPU counter cannot all see.
    from _syncs import _data

    X = _data(torch.device("cuda"))

    def syncs(n):
        fit = CoupledNMF(6, max_iter=n, blocks=[40, 80], random_state=0, tol=0.0)
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fit.fit(X)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchronizing" in str(w.message) for w in rec)

    syncs(2)  # compile the kernels first
    assert (syncs(12) - syncs(2)) / 10 == 1
