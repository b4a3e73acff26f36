"""Tests of the CoupledNMF estimator."""

import pickle
import re
import tracemalloc
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from _helpers import solver_kinds, spy_solvers
from sklearn.base import clone
from sklearn.decomposition import NMF
from sklearn.decomposition._nmf import _initialize_nmf
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_peek import CoupledNMF


def _planted(seed, n=120, widths=(12, 60, 240), noise=0.2, r=None):
    """W @ H with rank r (3..8) in blocks of very different widths and scales."""
    rng = np.random.RandomState(seed)
    r = rng.randint(3, 9) if r is None else r
    W = rng.gamma(1.0, 1.0, size=(n, r))
    blocks = []
    for j, p in enumerate(widths):
        M = W @ (rng.gamma(0.5, 1.0, size=(r, p)) * 10.0**j)
        blocks.append(np.maximum(M + noise * M.std() * rng.standard_normal(M.shape), 0))
    return np.hstack(blocks), r


BLOCKS = [("pix", 12), ("conv", 60), ("fc", 240)]


# ------------------------------------------------------------------ sklearn API
@parametrize_with_checks([CoupledNMF(max_iter=500, random_state=0)])
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def test_array_api_checks_in_their_own_process():
    # scikit-learn's check_array_api_input needs SCIPY_ARRAY_API=1 before scipy
    # is imported; conftest.py leaves those checks out of this process, and a
    # child process runs them (CoupledNMF and LayerActivationExtractor).
    import os
    import subprocess
    import sys

    import sklearn

    def check_name(check):
        return getattr(check, "func", check).__name__

    mark = parametrize_with_checks([CoupledNMF()])
    if not any(check_name(c) == "check_array_api_input" for _, c in mark.args[1]):
        # older scikit-learn releases (1.6 among them) yield these checks
        # only for estimators that declare array API support (ours do not)
        pytest.skip(f"scikit-learn {sklearn.__version__} yields no array API check")
    here = os.path.dirname(__file__)
    env = {**os.environ, "SCIPY_ARRAY_API": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA",
         "-k", "check_array_api_input",
         os.path.join(here, "test_coupled_nmf.py"),
         os.path.join(here, "test_extract_torch.py")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    passed = [ln for ln in proc.stdout.splitlines() if ln.startswith("PASSED")]
    assert len(passed) == 2, proc.stdout[-3000:]
    assert any("CoupledNMF" in ln for ln in passed)
    assert any("LayerActivationExtractor" in ln for ln in passed)
    assert "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-500:]


def test_tags():
    tags = CoupledNMF().__sklearn_tags__()
    assert tags.input_tags.positive_only
    assert tags.input_tags.sparse
    assert set(tags.transformer_tags.preserves_dtype) == {"float64", "float32"}


def test_kullback_leibler_does_not_claim_sparse_input():
    kl = CoupledNMF(
        solver="mu", beta_loss="kullback-leibler", max_iter=500, random_state=0
    )
    assert not kl.__sklearn_tags__().input_tags.sparse
    # the tag agrees with fit, which refuses sparse X naming it
    try:
        from sklearn.utils.estimator_checks import check_estimator_sparse_tag
    except ImportError:  # scikit-learn 1.6.0 (the lowest allowed) lacks it
        pass
    else:
        check_estimator_sparse_tag("CoupledNMF", kl)
    with pytest.raises(ValueError, match="needs dense X"):
        kl.fit(sp.csr_matrix(np.ones((4, 3))))
    # set_params switches the tag back
    assert kl.set_params(beta_loss="frobenius").__sklearn_tags__().input_tags.sparse


def test_the_torch_path_does_not_claim_sparse_input():
    import torch

    est = CoupledNMF(2, device=torch.device("cpu"), random_state=0)
    assert not est.__sklearn_tags__().input_tags.sparse
    try:
        from sklearn.utils.estimator_checks import check_estimator_sparse_tag
    except ImportError:  # scikit-learn 1.6.0 (the lowest allowed) lacks it
        pass
    else:  # failed: the tag said sparse, fit refused it
        check_estimator_sparse_tag("CoupledNMF", est)
    with pytest.raises(ValueError, match="scipy sparse matrix"):
        est.fit(sp.csr_matrix(np.ones((4, 3))))
    # "cpu" is the NumPy path, which takes sparse X
    assert est.set_params(device="cpu").__sklearn_tags__().input_tags.sparse
    est.fit(sp.csr_matrix(np.ones((4, 3))))
    # a device fit cannot use does not make the tags raise
    assert not est.set_params(device="tpu").__sklearn_tags__().input_tags.sparse


def test_penalty_scale_under_norm_weights_is_nmf_over_the_squared_norm():
    # coupled_nmf.rst and the alpha_W docstring: "norm" weights divide the
    # data term by ||X||_F^2, so NMF's alpha_W is alpha_W / ||X||_F^2 here
    from sklearn.datasets import load_digits

    X = load_digits().data / 16.0
    a, kw = 1e-3, dict(random_state=0, max_iter=500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        nmf = NMF(3, alpha_W=a, init="nndsvda", **kw).fit(X)
        scaled = CoupledNMF(3, alpha_W=a / np.sum(X**2), **kw).fit(X)
        same = CoupledNMF(3, alpha_W=a, **kw).fit(X)
    rel = nmf.reconstruction_err_ / np.linalg.norm(X)
    assert scaled.reconstruction_err_ == pytest.approx(rel, rel=2e-3)
    assert same.reconstruction_err_ > 0.99  # everything penalized away
    assert same.components_.max() < 0.01 * scaled.components_.max()


def test_clone_pickle_pipeline_and_attributes():
    X, _ = _planted(0, r=4)
    model = CoupledNMF(4, blocks=BLOCKS, random_state=0)
    W = model.fit_transform(X)
    assert model.components_.shape == (4, 312)
    assert model.n_components_ == 4
    assert model.block_names_ == ["pix", "conv", "fc"]
    assert model.block_slices_["conv"] == slice(12, 72)
    assert model.block_components("fc").shape == (4, 240)
    np.testing.assert_array_equal(
        model.block_components("pix"), model.components_[:, :12]
    )
    assert set(model.block_reconstruction_err_) == {"pix", "conv", "fc"}
    assert model.n_iter_ >= 1 and model.n_features_in_ == 312
    # "norm" weights: every block counts by its relative error.
    norms = [np.linalg.norm(X[:, s]) ** 2 for s in model.block_slices_.values()]
    np.testing.assert_allclose(model.block_weights_, 1 / np.array(norms), rtol=1e-10)
    rel = [
        model.block_reconstruction_err_[b] ** 2 * w
        for b, w in zip(model.block_names_, model.block_weights_)
    ]
    assert model.reconstruction_err_ == pytest.approx(np.sqrt(sum(rel)), rel=1e-8)
    assert list(model.get_feature_names_out()) == [f"couplednmf{i}" for i in range(4)]
    np.testing.assert_allclose(model.inverse_transform(W), W @ model.components_)

    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_allclose(again.transform(X), model.transform(X))
    cloned = clone(model)
    assert (
        not hasattr(cloned, "components_") and cloned.get_params() == model.get_params()
    )
    pipe = make_pipeline(
        FunctionTransformer(), CoupledNMF(4, blocks=BLOCKS, random_state=0)
    )
    np.testing.assert_allclose(pipe.fit_transform(X), W, rtol=1e-10)


def test_reproducible_with_random_state():
    X, _ = _planted(1, r=4)
    a = CoupledNMF(5, blocks=BLOCKS, init="random", random_state=3).fit_transform(X)
    b = CoupledNMF(5, blocks=BLOCKS, init="random", random_state=3).fit_transform(X)
    c = CoupledNMF(5, blocks=BLOCKS, init="random", random_state=4).fit_transform(X)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_default_init_rule_and_convergence_warning():
    X, _ = _planted(2, n=10, widths=(3, 5), r=3)
    # n_components > min(n_samples, n_features): random init, as scikit-learn.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = CoupledNMF(9, blocks=[3, 5], random_state=0, max_iter=500).fit(X)
        kw = dict(blocks=[3, 5], random_state=0, max_iter=500)
        rand = CoupledNMF(9, init="random", **kw).fit(X)
        # and NNDSVD (nndsvda) within that limit
        small = CoupledNMF(3, **kw).fit(X)
        nndsvda = CoupledNMF(3, init="nndsvda", **kw).fit(X)
    assert model.components_.shape == (9, 8)
    np.testing.assert_array_equal(model.components_, rand.components_)
    np.testing.assert_array_equal(small.components_, nndsvda.components_)
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        CoupledNMF(3, blocks=[3, 5], max_iter=2, tol=0).fit(X)


# --------------------------------------------------- correctness vs scikit-learn
@pytest.mark.parametrize(
    "solver, beta_loss, sk_solver",
    [("hals", "frobenius", "cd"), ("mu", "frobenius", "mu"),
     ("mu", "kullback-leibler", "mu")],
)  # fmt: skip
def test_one_block_matches_scikit_learn_nmf(solver, beta_loss, sk_solver):
    rng = np.random.RandomState(0)
    X = rng.rand(50, 4) @ rng.rand(4, 30) + 0.05 * rng.rand(50, 30)
    W0, H0 = _initialize_nmf(X, 4, init="nndsvda", random_state=0)
    kw = dict(init="custom", tol=1e-9, max_iter=4000)
    ours = CoupledNMF(4, block_weights="none", solver=solver, beta_loss=beta_loss, **kw)
    ref = NMF(4, solver=sk_solver, beta_loss=beta_loss, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        W = ours.fit_transform(X, W=W0.copy(), H=H0.copy())
        W_ref = ref.fit_transform(X, W=W0.copy(), H=H0.copy())
    assert ours.reconstruction_err_ == pytest.approx(ref.reconstruction_err_, rel=0.01)
    np.testing.assert_allclose(W @ ours.components_, W_ref @ ref.components_,
                               atol=0.02 * X.max())  # fmt: skip


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_default_hals_iterates_are_scikit_learn_cd_iterates(dtype):
    rng = np.random.RandomState(2)
    X = (rng.rand(40, 3) @ rng.rand(3, 25) + 0.1 * rng.rand(40, 25)).astype(dtype)
    W0, H0 = _initialize_nmf(X, 3, init="nndsvda", random_state=0)
    kw = dict(init="custom", tol=0, max_iter=12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = CoupledNMF(3, block_weights="none", **kw)
        W = ours.fit_transform(X, W=W0.copy(), H=H0.copy())
        ref = NMF(3, solver="cd", **kw)
        W_ref = ref.fit_transform(X, W=W0.copy(), H=H0.copy())
    rtol = 1e-9 if dtype == np.float64 else 1e-3
    np.testing.assert_allclose(W, W_ref, rtol=rtol, atol=rtol * W_ref.max())
    np.testing.assert_allclose(
        ours.components_, ref.components_, rtol=rtol, atol=rtol * H0.max()
    )


@pytest.mark.parametrize(
    "solver, beta_loss", [("hals", "frobenius"), ("mu", "kullback-leibler")]
)
def test_weighted_blocks_equal_nmf_of_weighted_concatenation(solver, beta_loss):
    rng = np.random.RandomState(1)
    Wt = rng.rand(60, 3)
    X = np.hstack([Wt @ rng.rand(3, 10), 30 * Wt @ rng.rand(3, 50)])
    X += 0.01 * rng.rand(*X.shape)
    weights = np.array([2.0, 0.05])
    # Frobenius: sqrt(w) scaling; KL (degree-1 homogeneous): w scaling.
    power = 0.5 if beta_loss == "frobenius" else 1.0
    s = np.repeat(weights**power, [10, 50])
    Y = X * s
    W0, H0 = _initialize_nmf(Y, 3, init="nndsvda", random_state=0)
    ours = CoupledNMF(
        3,
        blocks=[10, 50],
        block_weights=weights,
        solver=solver,
        beta_loss=beta_loss,
        init="custom",
        tol=1e-10,
        max_iter=3000,
    )
    ref = NMF(3, solver="cd" if solver == "hals" else "mu", beta_loss=beta_loss,
              init="custom", tol=1e-10, max_iter=3000)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        W = ours.fit_transform(X, W=W0.copy(), H=H0 / s)
        W_ref = ref.fit_transform(Y, W=W0.copy(), H=H0.copy())
    np.testing.assert_allclose(ours.block_weights_, weights)
    np.testing.assert_allclose(W @ ours.components_ * s, W_ref @ ref.components_,
                               rtol=1e-3, atol=1e-3 * Y.max())  # fmt: skip
    assert ours.reconstruction_err_ == pytest.approx(ref.reconstruction_err_, rel=1e-3)


def test_passive_block_does_not_move_w():
    X, _ = _planted(3, r=3)
    W0, H0 = _initialize_nmf(X[:, :72], 3, init="nndsvda", random_state=0)
    H0_full = np.hstack([H0, np.ones((3, 240))])
    kw = dict(init="custom", max_iter=50, tol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        full = CoupledNMF(3, blocks=[12, 60, 240], block_weights=[1.0, 0.5, 0.0], **kw)
        W_full = full.fit_transform(X, W=W0.copy(), H=H0_full)
        part = CoupledNMF(3, blocks=[12, 60], block_weights=[1.0, 0.5], **kw)
        W_part = part.fit_transform(X[:, :72], W=W0.copy(), H=H0.copy())
    np.testing.assert_allclose(W_full, W_part, rtol=1e-8)
    # The passive block's components are the NNLS fit given W.
    assert full.block_reconstruction_err_["block2"] < 0.5 * np.linalg.norm(X[:, 72:])


# ------------------------------------------------------------------- rank / score
def test_gridsearch_recovers_planted_rank():
    hits = []
    for seed in range(10):
        X, r = _planted(seed)
        search = GridSearchCV(
            CoupledNMF(blocks=BLOCKS, random_state=0), {"n_components": range(1, 16)},
            cv=3,
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            search.fit(X)
        hits.append(abs(search.best_params_["n_components"] - r) <= 1)
    assert sum(hits) >= 9, hits


def test_score_does_not_grow_with_rank():
    X, _ = _planted(4, r=4)
    train, test = X[:90], X[90:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = {
            k: CoupledNMF(k, blocks=BLOCKS, random_state=0).fit(train).score(test)
            for k in (1, 4, 14)
        }
    assert scores[4] > scores[1] and scores[4] > scores[14]
    assert all(-1.5 < s <= 0 for s in scores.values())


def test_score_with_nothing_to_hold_out_warns_that_it_is_in_sample():
    X = np.random.RandomState(0).rand(30, 2) + 0.1
    model = CoupledNMF(1, blocks=[1, 1], random_state=0).fit(X)
    with pytest.warns(UserWarning, match=r"single column, so none can be held out"):
        s = model.score(X)
    W = model.transform(X)  # the in-sample fit, W solved on all the columns
    d = model._fitted_column_weights()
    err = ((X - W @ model.components_) ** 2) @ d
    np.testing.assert_allclose(s, -err.sum() / ((X**2) @ d).sum(), rtol=1e-6)
    with warnings.catch_warnings():  # a block of two columns holds one out
        warnings.simplefilter("error", UserWarning)
        CoupledNMF(1, random_state=0).fit(X).score(X)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_score_of_data_too_large_to_square_is_an_error_not_nan(as_tensor):
    # fit refuses such X up front; score saw it only as a NaN
    X = np.random.RandomState(0).rand(30, 20)
    model = CoupledNMF(3, blocks=[10, 10], random_state=0, max_iter=500).fit(X)
    big = X * 1e200
    if as_tensor:
        import torch

        big = torch.from_numpy(big)
    with (
        np.errstate(over="ignore", invalid="ignore"),
        pytest.raises(ValueError, match=r"score: X's held-out squared error or "
                      r"squared norm is not finite.*norm inf.*Rescale X"),
    ):  # fmt: skip
        model.score(big)
    assert np.isfinite(model.score(X * 1e150))


# ------------------------------------------------------------ subsets of blocks
def test_transform_from_a_subset_of_blocks():
    X, _ = _planted(5, r=4, noise=0.01)
    names = [f"{b}__f{i}" for b, size in BLOCKS for i in range(size)]
    df = pd.DataFrame(X, columns=names)
    model = CoupledNMF(4, blocks="auto", random_state=0).fit(df)
    assert model.block_names_ == ["pix", "conv", "fc"]
    W_full = model.transform(df)
    W_arr = model.transform(X[:, 12:72], blocks=["conv"])
    W_df = model.transform(df[[c for c in names if c.startswith("conv__")]])
    np.testing.assert_allclose(W_arr, W_df)
    # Clean data: one block alone places the samples where all blocks do.
    np.testing.assert_allclose(W_arr, W_full, rtol=0.1, atol=0.05 * W_full.max())
    # Blocks listed in another order than in fit: columns follow the list.
    W_two = model.transform(np.hstack([X[:, 72:], X[:, :12]]), blocks=["fc", "pix"])
    W_fit_order = model.transform(
        np.hstack([X[:, :12], X[:, 72:]]), blocks=["pix", "fc"]
    )
    np.testing.assert_allclose(W_two, W_fit_order, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(W_two, W_full, rtol=0.1, atol=0.05 * W_full.max())
    # Swapped columns without saying so give another (worse) answer.
    W_wrong = model.transform(np.hstack([X[:, 72:], X[:, :12]]), blocks=["pix", "fc"])
    assert not np.allclose(W_wrong, W_two, rtol=0.1, atol=0.05 * W_full.max())
    rec = model.inverse_transform(W_arr)
    np.testing.assert_allclose(rec, W_arr @ model.components_)


def test_pipeline_with_pandas_output_and_auto_blocks():
    X, _ = _planted(6, r=3)
    names = [f"{b}__f{i}" for b, size in BLOCKS for i in range(size)]
    df = pd.DataFrame(X, columns=names)
    pipe = make_pipeline(FunctionTransformer(feature_names_out="one-to-one"),
                         CoupledNMF(3, blocks="auto", random_state=0))  # fmt: skip
    pipe.set_output(transform="pandas")
    out = pipe.fit_transform(df)
    assert list(out.columns) == ["couplednmf0", "couplednmf1", "couplednmf2"]
    assert pipe[-1].block_names_ == ["pix", "conv", "fc"]


# ----------------------------------------------------------- dtypes, sparse, memory
def test_float32_preserved_and_not_copied():
    rng = np.random.RandomState(0)
    # large enough that a row chunk (2**18 entries, 1 MiB: the explicit
    # residual of the final errors) is well below the size of X
    X = (rng.rand(800, 4) @ rng.rand(4, 1500)).astype(np.float32)
    model = CoupledNMF(4, blocks=[500, 1000], random_state=0, max_iter=30, tol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        tracemalloc.start()
        W = model.fit_transform(X)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < X.nbytes  # no float64 (or float32) copy of X
    assert W.dtype == np.float32 and model.components_.dtype == np.float32
    assert model.transform(X).dtype == np.float32
    assert model.transform(X[:, :500], blocks=["block0"]).dtype == np.float32
    assert model.inverse_transform(W).dtype == np.float32


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_sparse_csr_matches_dense():
    X, _ = _planted(7, r=3)
    X[np.random.RandomState(0).rand(*X.shape) < 0.6] = 0
    dense = CoupledNMF(3, blocks=BLOCKS, random_state=0, max_iter=20, tol=0)
    sparse = clone(dense)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        W = dense.fit_transform(X)
        Ws = sparse.fit_transform(sp.csr_matrix(X))
    np.testing.assert_allclose(W, Ws, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(sparse.transform(sp.csr_matrix(X)), dense.transform(X),
                               rtol=1e-6, atol=1e-9)  # fmt: skip
    assert sparse.score(sp.csr_matrix(X)) == pytest.approx(dense.score(X))
    # empty last columns (np.add.reduceat over the CSC pointers failed there)
    X[:, -3:] = 0
    est = CoupledNMF(3, blocks=BLOCKS, block_weights="none", random_state=0,
                     max_iter=20, tol=0)  # fmt: skip
    ref = clone(est).fit(X)
    for sparse_type in (sp.csr_matrix, sp.csc_matrix, sp.coo_matrix):
        model = clone(est).fit(sparse_type(X))
        np.testing.assert_allclose(model.components_, ref.components_, rtol=1e-6,
                                   atol=1e-9)  # fmt: skip
    kl = CoupledNMF(3, solver="mu", beta_loss="kullback-leibler")
    with pytest.raises(ValueError, match=r"kullback-leibler.*dense X"):
        kl.fit(sp.csr_matrix(X))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("as_tensor", [False, True])
def test_kullback_leibler_refuses_data_below_its_floor(as_tensor):
    # W @ H is floored at float32 eps: data all below it cannot be fitted
    # (the error came out as 1/sqrt(scale), 4.6e6 for a scale of 1e-15)
    import torch

    X = np.random.default_rng(0).random((20, 12)) * 1e-9
    kl = CoupledNMF(2, solver="mu", beta_loss="kullback-leibler", max_iter=50)
    data = torch.from_numpy(X) if as_tensor else X
    with pytest.raises(ValueError, match=r"largest value of 9.97e-10, below .*X / X"):
        kl.fit(data)
    kl.fit(X / X.max())  # rescaled as the message says: no error


@pytest.mark.parametrize("solver", ["hals", "mu"])
def test_dead_units_and_zero_rows_give_finite_results(solver):
    X, _ = _planted(8, r=3)
    X[:, [0, 5, 20, 100]] = 0  # dead units
    X[[3, 7]] = 0  # all-zero samples
    model = CoupledNMF(5, blocks=BLOCKS, solver=solver, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        W = model.fit_transform(X)
    assert np.isfinite(W).all() and np.isfinite(model.components_).all()
    assert np.all(W[[3, 7]] == 0)
    np.testing.assert_array_equal(model.components_[:, [0, 5, 20, 100]], 0)
    assert np.isfinite(model.transform(X)).all()
    assert np.isfinite(model.score(X))
    assert np.isfinite(list(model.block_reconstruction_err_.values())).all()


# ------------------------------------------------------------------- bad input
def _fit_err(X, match, **params):
    with pytest.raises(ValueError, match=match):
        CoupledNMF(**params).fit(X)


def test_bad_data_values_name_argument_value_and_position():
    X = np.ones((6, 5))
    X[2, 3] = -0.5
    _fit_err(X, r"Negative values.*X\[2, 3\] = -0\.5.*row 2, column 3.*non-negative")
    X[2, 3] = np.nan
    _fit_err(X, r"NaN.*X\[2, 3\].*row 2, column 3.*expected finite")
    X[2, 3] = np.inf
    _fit_err(X, r"infinity.*row 2, column 3")
    # a DataFrame's column names: the message names the column too
    cols = ["input__p0", "input__p1", "fc__u0", "fc__u1", "fc__u2"]
    _fit_err(pd.DataFrame(X, columns=cols), r"row 2, column 3 \(column 'fc__u1'\)")
    ones = pd.DataFrame(np.ones((6, 5)), columns=cols)
    named = CoupledNMF(2, blocks="auto").fit(ones)
    with pytest.raises(ValueError, match=r"column 3 \(column 'fc__u1'\)"):
        named.transform(pd.DataFrame(X, columns=cols))
    with pytest.raises(ValueError, match=r"column 1 \(column 'fc__u1'\)"):
        named.transform(pd.DataFrame(X[:, 2:], columns=cols[2:]), blocks=["fc"])
    model = CoupledNMF(2, blocks=[2, 3]).fit(np.ones((6, 5)))
    bad = np.ones((3, 5))
    bad[1, 4] = -1
    with pytest.raises(ValueError, match=r"transform argument X.*X\[1, 4\] = -1\.0"):
        model.transform(bad)


def test_bad_blocks():
    X = np.random.RandomState(0).rand(8, 6)
    _fit_err(X, r"blocks=\[2, 3\] add up to 5 columns.*n_features=6", blocks=[2, 3])
    _fit_err(X, r"blocks\[1\]='x' is not understood", blocks=[3, "x"])
    _fit_err(X, r"block 'a' has size 0", blocks=[("a", 0), ("b", 6)])
    _fit_err(X, r"block names \['a'\] are repeated", blocks=[("a", 3), ("a", 3)])
    _fit_err(X, r"'a__b' is not allowed", blocks=[("a__b", 6)])
    _fit_err(X, r"blocks='auto' needs feature names", blocks="auto")
    df = pd.DataFrame(X, columns=["a__1", "a__2", "b__1", "a__3", "c__1", "c__2"])
    _fit_err(df, r"block 'a' are not contiguous.*column 3, 'a__3'", blocks="auto")
    df.columns = ["a__1", "a__2", "b__1", "b3", "c__1", "c__2"]
    _fit_err(df, r"feature name 'b3' \(column 3\) has no '__'", blocks="auto")
    _fit_err(X, r"'blocks' parameter", blocks=5)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_data_whose_squares_leave_the_dtype_range_are_refused():
    # float32 squares underflow below about 1.1e-19 and a squared norm above
    # float32's maximum overflows: refused with the scale and the way out,
    # where the fit used to end in NaN or an SVD failure.
    base = np.random.RandomState(0).rand(20, 10)
    for scale, what in (
        (1e-20, r"a largest value of 1e-20, below 1\.1e-19: the squares of all"),
        (1e20, r"a squared norm of \S+, beyond the largest float32"),
    ):
        X = (base * scale).astype(np.float32)
        X[0, 0] = scale  # the largest value, exactly
        for bw in ("norm", "none"):
            _fit_err(
                X,
                rf"X has {what}.*Rescale X \(e\.g\. X / X\.max\(\)\), or pass "
                r"float64 data\.",
                n_components=2, blocks=[4, 6], block_weights=bw,
            )  # fmt: skip
        # the same data in float64 are within range and fit
        m = CoupledNMF(2, blocks=[4, 6], random_state=0).fit(X.astype(np.float64))
        assert np.isfinite(m.reconstruction_err_) and m.reconstruction_err_ < 1
    # the edges of the accepted range still give finite fits in float32, and
    # so does sparse data whose few values are tiny (its root-mean-square
    # over all entries is below the limit, its values are not)
    sparse_tiny = np.zeros((300, 200))
    sparse_tiny.flat[np.random.RandomState(1).choice(60000, 30)] = 1e-18
    for X in (base * 3e-19, base * 1e18, sparse_tiny):
        m = CoupledNMF(2, random_state=0).fit(X.astype(np.float32))
        assert np.isfinite(m.reconstruction_err_) and np.isfinite(m.components_).all()


def test_a_dataframe_column_of_words_is_named():
    pd = pytest.importorskip("pandas")
    X = np.random.RandomState(0).rand(12, 4)
    df = pd.DataFrame(X, columns=["a__0", "a__1", "b__0", "b__1"])
    model = CoupledNMF(2, blocks="auto", random_state=0, max_iter=500)
    model.fit(df.astype(object))  # numbers held as objects convert, as before
    words = df.assign(b__1=["x"] * 12)
    for call, where in [(model.fit, "fit"), (model.transform, "transform")]:
        with pytest.raises(ValueError, match=rf"CoupledNMF\.{where}: X has column "
                           r"'b__1' of dtype .* \(first value 'x'\); expected "
                           r"numbers in every column"):  # fmt: skip
            call(words)
    from sklearn_peek import RankQualityScorer

    layers = words.rename(columns=lambda c: c.replace("a__", "input__"))
    with pytest.raises(ValueError, match=r"RankQualityScorer\.fit: X has column 'b"):
        RankQualityScorer(ranks=[1, 2], cv=2).fit(layers)


def test_convergence_warning_points_at_the_callers_line():
    # it pointed into scikit-learn (base.py, _fit_context's wrapper)
    X = np.random.RandomState(0).rand(30, 12)
    model = CoupledNMF(3, max_iter=1, random_state=0)
    pipe = make_pipeline(FunctionTransformer(), CoupledNMF(3, max_iter=1))
    from sklearn_peek import RankQualityScorer

    scorer = RankQualityScorer(
        blocks=[("input", 6), ("l", 6)], ranks=[1, 2], cv=2, max_iter=1
    )
    for call in (model.fit, model.fit_transform, pipe.fit, scorer.fit):
        with pytest.warns(ConvergenceWarning, match="max_iter=1") as rec:
            call(X)
        assert {w.filename for w in rec} == {__file__}, call


def test_bad_block_weights():
    X = np.random.RandomState(0).rand(8, 6)
    kw = dict(blocks=[("a", 2), ("b", 4)])
    _fit_err(X, r"gives 3 value\(s\); expected 2.*a, b", block_weights=[1, 2, 3], **kw)
    _fit_err(X, r"entry 1 \(block 'b'\) is -1\.0", block_weights=[1, -1], **kw)
    _fit_err(X, r"entry 0 \(block 'a'\) is nan", block_weights=[np.nan, 1], **kw)
    _fit_err(X, r"all weights are zero", block_weights=[0, 0], **kw)
    tiny = X.copy()
    tiny[:, 2:] *= 1e-300  # not zeros: their squares underflow
    _fit_err(tiny, r"fit: the squared norm of block 'b' of X underflows to 0 in "
             r"float64 \(its "
             r"largest value is \d\.\d+e-30\d\)\. Rescale X", **kw)  # fmt: skip
    _fit_err(sp.csr_matrix(tiny), r"block 'b' of X underflows", **kw)
    X[:, 2:] = 0
    _fit_err(X, r"block 'b' of X is all zeros", **kw)
    # Explicit weights accept the all-zero block.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        CoupledNMF(2, block_weights=[1, 1], **kw).fit(X)


def test_bad_rank_init_and_parameters():
    X = np.random.RandomState(0).rand(8, 6)
    _fit_err(X, r"n_components=7 is larger than min\(n_samples, n_features\)=6.*"
             r"init='nndsvd'", n_components=7, init="nndsvd")  # fmt: skip
    _fit_err(
        X, r"'solver' parameter of CoupledNMF must be .*Got 'lbfgs' instead\.$",
        solver="lbfgs",
    )  # fmt: skip
    # a misspelt option: scikit-learn's message, then the close matches
    _fit_err(
        X, r"'beta_loss'.*Got 'kullback' instead\. Did you mean 'kullback-leibler'\?$",
        beta_loss="kullback",
    )  # fmt: skip
    with pytest.raises(InvalidParameterError, match=r"Did you mean 'hals'\?"):
        CoupledNMF(2, solver="HALS").fit(X)
    _fit_err(X, r"solver='hals' does not support beta_loss='kullback-leibler'",
             beta_loss="kullback-leibler")  # fmt: skip
    _fit_err(X, r"'n_components' parameter.*Got 0", n_components=0)
    _fit_err(X, r"'n_components'.*a number, not a bool\. Got True", n_components=True)
    with pytest.raises(ValueError, match=r"init='custom' needs both W and H.*W=None"):
        CoupledNMF(2, init="custom").fit_transform(X, H=np.ones((2, 6)))
    with pytest.raises(
        ValueError, match=r"argument W has shape \(8, 3\); expected \(8, 2\)"
    ):
        CoupledNMF(2, init="custom").fit_transform(
            X, W=np.ones((8, 3)), H=np.ones((2, 6))
        )
    with pytest.raises(ValueError, match=r"Negative values.*argument H"):
        CoupledNMF(2, init="custom").fit_transform(
            X, W=np.ones((8, 2)), H=-np.ones((2, 6))
        )
    W_nan = np.ones((8, 2))
    W_nan[3, 1] = np.nan
    with pytest.raises(
        ValueError,
        match=r"Input W contains NaN: CoupledNMF.fit_transform argument W has "
        r"W\[3, 1\] = nan",
    ):
        CoupledNMF(2, init="custom").fit_transform(X, W=W_nan, H=np.ones((2, 6)))
    with pytest.raises(ValueError, match=r"Input H contains infinity.*argument H"):
        CoupledNMF(2, init="custom").fit(
            X, W=np.ones((8, 2)), H=np.full((2, 6), np.inf)
        )
    with pytest.warns(
        RuntimeWarning, match="W and H passed to fit_transform are ignored"
    ):
        CoupledNMF(2).fit_transform(X, W=np.ones((8, 2)), H=np.ones((2, 6)))
    # an all-zero start stays at zero (it returned an all-zero model)
    for solver in ("hals", "mu"):
        with pytest.raises(ValueError, match=r"init='custom': argument W is all "
                           r"zeros; the updates scale it"):  # fmt: skip
            CoupledNMF(2, init="custom", solver=solver).fit_transform(
                X, W=np.zeros((8, 2)), H=np.ones((2, 6))
            )
    with pytest.raises(ValueError, match=r"argument H is all zeros"):
        CoupledNMF(2, init="custom").fit(X, W=np.ones((8, 2)), H=np.zeros((2, 6)))


def test_bad_transform_inputs():
    X, _ = _planted(9, n=30, r=3)
    model = CoupledNMF(3, blocks=BLOCKS, random_state=0).fit(X)
    with pytest.raises(
        ValueError, match="X has 311 features, but CoupledNMF is expecting 312"
    ):
        model.transform(X[:, 1:])
    with pytest.raises(
        ValueError, match=r"blocks='con' is not a block.*Did you mean 'conv'\?"
    ):
        model.transform(X[:, 12:72], blocks=["con"])
    with pytest.raises(
        ValueError, match=r"X has 59 features, but blocks=\['conv'\] have 60"
    ):
        model.transform(X[:, 12:71], blocks=["conv"])
    with pytest.raises(ValueError, match=r"name='nope' is not a block"):
        model.block_components("nope")
    with pytest.raises(ValueError, match=r"has 2 columns; expected n_components_=3"):
        model.inverse_transform(np.ones((4, 2)))
    W_bad = np.ones((4, 3))
    W_bad[2, 0] = np.nan
    with pytest.raises(
        ValueError,
        match=r"Input X contains NaN: CoupledNMF.inverse_transform argument X "
        r"\(the sample factor W\) has X\[2, 0\] = nan",
    ):
        model.inverse_transform(W_bad)
    # a negative W is not refused (inverse_transform is a plain product)
    W_bad[2, 0] = -1.0
    assert model.inverse_transform(W_bad).shape == (4, 312)
    names = [f"{b}__f{i}" for b, size in BLOCKS for i in range(size)]
    dfmodel = CoupledNMF(3, blocks="auto", random_state=0).fit(
        pd.DataFrame(X, columns=names)
    )
    with pytest.raises(ValueError, match=r"score: X holds a subset of the blocks"):
        dfmodel.score(pd.DataFrame(X[:, :12], columns=names[:12]))
    part = pd.DataFrame(X[:, :20], columns=names[:20])  # pix + part of conv
    with pytest.raises(
        ValueError, match=re.escape("cover block(s) ['conv'] only in part")
    ):
        dfmodel.transform(part)


def test_device_dispatch(monkeypatch):
    import torch

    calls = spy_solvers(monkeypatch)
    X = np.random.RandomState(0).rand(8, 6)
    CoupledNMF(2, device="cpu").fit(X)
    assert solver_kinds(calls) == {"numpy"}  # "cpu" is the NumPy path
    with pytest.raises(ValueError, match=r"device='tpu' is not understood"):
        CoupledNMF(2, device="tpu").fit(X)
    # strings torch.device itself refuses, with a RuntimeError (uncaught before)
    for bad in ("cuda:00", "cuda:99999999999999999999"):
        with pytest.raises(ValueError, match=rf"device='{bad}' is not understood"):
            CoupledNMF(2, device=bad).fit(X)
    # A torch device runs the torch solvers (tests/test_torch_backend.py)...
    model = CoupledNMF(2, device=torch.device("cpu"), random_state=0).fit(X)
    assert solver_kinds(calls) == {"torch"}
    assert isinstance(model.components_, np.ndarray)  # ... attributes stay NumPy
    # "auto" without a GPU falls back to the NumPy path quietly.
    if not torch.cuda.is_available():
        CoupledNMF(2, device="auto").fit(X)
        assert solver_kinds(calls) == {"numpy"}


# ------------------------------------------------------------ fit_ranks
def _rank_data(seed=0):
    rng = np.random.RandomState(seed)
    W = rng.rand(90, 4)
    X = np.hstack([W @ rng.rand(4, 30), 20 * W @ rng.rand(4, 100)])
    return X * rng.uniform(0.95, 1.05, size=X.shape), [("input", 30), ("layer", 100)]


@pytest.mark.parametrize("torch_input", [False, True])
def test_fit_ranks_equals_one_fit_per_rank(torch_input, monkeypatch):
    from sklearn_peek import _coupled_nmf

    X, blocks = _rank_data()
    if torch_input:
        import torch

        X = torch.from_numpy(X)
    # Small batches: the ranks run as two stacked groups (4+1+6, then 3+2).
    monkeypatch.setattr(_coupled_nmf, "_BATCH_ROWS", 11)
    est = CoupledNMF(blocks=blocks, random_state=0, max_iter=150, tol=1e-4)
    ranks = [4, 1, 6, 3, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        models, Ws = _coupled_nmf.fit_ranks(est, X, ranks)
        refs = [clone(est).set_params(n_components=r) for r in ranks]
        W_refs = [m.fit_transform(X) for m in refs]
    iters = [m.n_iter_ for m in refs]
    assert len(set(iters)) > 1  # problems left the batch at different times
    for r, m, W, ref, W_ref in zip(ranks, models, Ws, refs, W_refs):
        assert m.n_components_ == r and m.components_.shape == (r, 130)
        assert m.n_iter_ == ref.n_iter_
        assert type(W) is type(W_ref)
        np.testing.assert_allclose(
            m.components_, ref.components_, rtol=1e-9, atol=1e-12
        )
        np.testing.assert_allclose(
            np.asarray(W), np.asarray(W_ref), rtol=1e-9, atol=1e-12
        )
        assert m.reconstruction_err_ == pytest.approx(
            ref.reconstruction_err_, rel=1e-10
        )
        assert m.block_names_ == ref.block_names_
        np.testing.assert_allclose(m.block_weights_, ref.block_weights_)
    # Each model owns its fitted attributes, as separately fitted models do.
    models[0].block_weights_[0] = 99.0
    models[0].block_names_.append("x")
    assert models[1].block_weights_[0] != 99.0
    assert models[1].block_names_ == refs[1].block_names_


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("torch_input", [False, True])
def test_scores_of_several_ranks_in_one_stacked_solve(torch_input):
    from sklearn_peek import _coupled_nmf

    X, blocks = _rank_data()
    X_test = X[:30] * 1.1 + 0.05
    if torch_input:
        import torch

        X, X_test = torch.from_numpy(X), torch.from_numpy(X_test)
    est = CoupledNMF(blocks=blocks, random_state=3, max_iter=150)
    models, _ = _coupled_nmf.fit_ranks(est, X, [4, 1, 6, 3])
    want = [m.score(X_test) for m in models]
    got = _coupled_nmf._held_out_scores(models, X_test)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert len(set(np.round(want, 6))) == len(want)  # the ranks differ
    # Models that do not share the held-out columns are scored one by one.
    other = clone(models[2]).set_params(random_state=4).fit(X)
    mixed = _coupled_nmf._held_out_scores([models[0], other], X_test)
    np.testing.assert_allclose(mixed, [want[0], other.score(X_test)], rtol=1e-12)
    if not torch_input:
        # ... with the caller's X: a DataFrame of one block gets score's own
        # error, as it would scored one by one
        cols = [f"{b}__f{i}" for b, s in blocks for i in range(s)]
        frame = pd.DataFrame(np.asarray(X), columns=cols)
        named = [clone(m).fit(frame) for m in (models[0], other)]
        part = frame[[c for c in cols if c.startswith(blocks[1][0])]]
        with pytest.raises(ValueError, match=r"score: X holds a subset of the blocks"):
            _coupled_nmf._held_out_scores(named, part)


def test_fit_ranks_without_a_stackable_solver_fits_one_by_one():
    from sklearn_peek._coupled_nmf import fit_ranks

    X, blocks = _rank_data(1)
    est = CoupledNMF(blocks=blocks, solver="mu", random_state=0, max_iter=80)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        models, _ = fit_ranks(est, X, [2, 3])
        ref = clone(est).set_params(n_components=3).fit(X)
    assert [m.n_components_ for m in models] == [2, 3]
    np.testing.assert_array_equal(models[1].components_, ref.components_)


@pytest.mark.parametrize("solver", ["hals", "mu"])
def test_verbose_prints_the_objective_and_how_the_fit_ended(solver, capsys):
    from sklearn_peek import fit_ranks

    X, blocks = _rank_data(1)
    est = CoupledNMF(3, blocks=blocks, solver=solver, random_state=0, verbose=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        short = clone(est).set_params(max_iter=8).fit(X)
    # fewer than 10 iterations printed nothing at all (MU also prints the
    # objective it checks at max_iter)
    lines = capsys.readouterr().out.splitlines()
    assert short.n_iter_ == 8 and len(lines) == (1 if solver == "hals" else 2)
    assert lines[-1].startswith(
        f"CoupledNMF[{solver}] stopped at max_iter after 8 iterations: objective "
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        full = clone(est).set_params(max_iter=300).fit(X)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"CoupledNMF[{solver}] iteration 10: objective ")
    why = "converged" if full.n_iter_ < 300 else "stopped at max_iter"
    assert lines[-1].startswith(
        f"CoupledNMF[{solver}] {why} after {full.n_iter_} iterations: objective "
    )
    assert len(lines) == full.n_iter_ // 10 + 1
    # stacked fits (HALS) printed nothing; each rank says how it ended
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        models, _ = fit_ranks(clone(est).set_params(max_iter=30), X, [2, 3])
    out = capsys.readouterr().out
    tag = "CoupledNMF[hals, rank {}]" if solver == "hals" else "CoupledNMF[mu]"
    for m in models:
        end = f" after {m.n_iter_} iterations: objective "
        assert (tag.format(m.n_components_) + " converged" + end in out) or (
            tag.format(m.n_components_) + " stopped at max_iter" + end in out
        )


@pytest.mark.parametrize(
    "args, match",
    [
        (
            (CoupledNMF(), [2, 2.5]),
            r"ranks=\[2, 2\.5\] contains 2\.5; expected integers >= 1",
        ),
        ((CoupledNMF(), [0, 1]), r"ranks=\[0, 1\] contains 0; expected integers >= 1"),
        ((CoupledNMF(init="custom"), [1]), r"init='custom'.*expected another init"),
        ((NMF(), [1]), r"estimator is a NMF; expected a CoupledNMF"),
        ((CoupledNMF(), []), r"ranks=\[\] is empty; expected at least one"),
        ((CoupledNMF(), range(3, 3)), r"ranks=range\(3, 3\) is empty"),
        (
            (CoupledNMF(), [2, 3, 2]),
            r"ranks=\[2, 3, 2\] contains rank 2 more than once; expected distinct",
        ),
        ((CoupledNMF(), None), r"ranks=None is not an iterable of integers"),
        ((CoupledNMF(), 3), r"ranks=3 is not an iterable of integers"),
    ],
)
def test_fit_ranks_bad_input(args, match):
    from sklearn_peek import fit_ranks

    X, _ = _rank_data()
    with pytest.raises((ValueError, TypeError), match=match):
        fit_ranks(args[0], X, args[1])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_ranks_as_a_torch_tensor_count_as_their_values():
    import torch

    from sklearn_peek import RankQualityScorer, fit_ranks

    X, blocks = _rank_data()
    est = CoupledNMF(blocks=blocks, random_state=0, max_iter=30)
    models, _ = fit_ranks(est, X, torch.tensor([3, 1]))
    assert [m.n_components_ for m in models] == [3, 1]
    with pytest.raises(ValueError, match=r"contains 1\.5; expected integers"):
        fit_ranks(est, X, torch.tensor([1.5]))
    with pytest.raises(ValueError, match=r"\]\]\) contains tensor\(\[1, 2\]\)"):
        fit_ranks(est, X, torch.tensor([[1, 2], [3, 4]]))
    kw = dict(blocks=blocks, cv=3, max_iter=30, random_state=0)
    sc = RankQualityScorer(ranks=torch.arange(1, 4), **kw).fit(X)
    ref = RankQualityScorer(ranks=np.arange(1, 4), **kw).fit(X)
    np.testing.assert_array_equal(sc.ranks_, [1, 2, 3])
    np.testing.assert_array_equal(
        sc.cv_results_["mean_score"], ref.cv_results_["mean_score"]
    )


@pytest.mark.parametrize("as_tensor", [False, True])
def test_float32_errors_of_a_good_fit_are_those_of_the_residual(as_tensor):
    # A good float32 fit: the Gram form of the errors (||X||^2 - 2 lin + quad)
    # cancels to noise (it was 2% off on NumPy and 1.5% on torch, in
    # opposite directions); the errors are those of X - W H in float64.
    rng = np.random.RandomState(0)
    X = rng.rand(50, 30)
    X[X < 0.6] = 0
    X[:, 3], X[7] = 0, 0
    X[:, 20:] *= 1000
    X = X.astype(np.float32)
    model = CoupledNMF(10, random_state=0)
    if as_tensor:
        import torch

        W = model.fit_transform(torch.from_numpy(X)).numpy()
    else:
        W = model.fit_transform(X)
    R = X.astype(np.float64) - W.astype(np.float64) @ model.components_
    sq_err = (R**2).sum()
    assert model.reconstruction_err_ < 0.01  # the regime of the cancellation
    assert model.block_reconstruction_err_["block0"] == pytest.approx(
        np.sqrt(sq_err), rel=1e-4
    )
    assert model.reconstruction_err_ == pytest.approx(
        np.sqrt(sq_err * model.block_weights_[0]), rel=1e-4
    )


def _at_odd_offset(A, offset=13):
    """A copy of ``A`` whose data starts ``offset`` bytes past a 64-byte
    boundary (not aligned to its dtype), as dask hands arrays to workers."""
    buf = np.zeros(A.nbytes + 128, np.uint8)
    start = (-buf.ctypes.data) % 64 + offset
    out = np.frombuffer(buf[start : start + A.nbytes].data, dtype=A.dtype)
    out = out.reshape(A.shape)
    out[:] = A
    assert not out.flags.aligned
    return out


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_results_do_not_depend_on_the_arrays_alignment():
    # NumPy's products leave BLAS out on unaligned arrays and round
    # differently: the same data from a dask worker gave other scores
    from sklearn_peek import RankQualityScorer

    X = np.random.default_rng(0).random((60, 40), dtype=np.float32)
    odd = _at_odd_offset(X)
    kw = dict(n_components=3, blocks=[30, 10], init="random", random_state=0)
    ref = CoupledNMF(max_iter=50, **kw).fit(X)
    got = CoupledNMF(max_iter=50, **kw).fit(odd)
    np.testing.assert_array_equal(got.components_, ref.components_)
    np.testing.assert_array_equal(got.transform(odd), ref.transform(X))
    sc = dict(blocks=[("input", 30), ("fc", 10)], ranks=[1, 2, 3], criterion="elbow")
    ref = RankQualityScorer(max_iter=50, random_state=0, **sc).fit(X)
    got = RankQualityScorer(max_iter=50, random_state=0, **sc).fit(odd)
    np.testing.assert_array_equal(
        got.cv_results_["mean_score"], ref.cv_results_["mean_score"]
    )


def test_an_unaligned_fortran_array_gives_the_aligned_arrays_result():
    # the copy keeps the memory order, which changes the rounding too (this
    # guards order="K" of the copy; the alignment itself is the test above)
    X = np.asfortranarray(np.random.default_rng(1).random((50, 30)))
    odd = _at_odd_offset(X.T).T  # Fortran order, unaligned
    assert odd.flags.f_contiguous and not odd.flags.aligned
    kw = dict(n_components=3, init="random", random_state=0, max_iter=40)
    ref = CoupledNMF(**kw).fit(X)
    got = CoupledNMF(**kw).fit(odd)
    np.testing.assert_array_equal(got.components_, ref.components_)
