"""Tests of the private solver functions (sklearn_peek._solvers)."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import nnls
from sklearn.decomposition import NMF
from sklearn.decomposition._nmf import _initialize_nmf

from sklearn_peek import _solvers


def _planted(seed, n=40, p=30, r=4, noise=0.05, dtype=np.float64):
    rng = np.random.RandomState(seed)
    X = rng.rand(n, r) @ rng.rand(r, p) + noise * rng.rand(n, p)
    return X.astype(dtype)


def _objective(X, W, H, d):
    R = X - W @ H
    return 0.5 * float(((R * R) @ d).sum())


def test_randomized_svd_weighted_matches_dense_svd():
    X = _planted(0, n=50, p=35, r=6, noise=0.01)
    s = np.linspace(0.5, 2.0, X.shape[1])
    U, S, Vt = _solvers.randomized_svd_weighted(X, s, 4, np.random.RandomState(0))
    S_ref = np.linalg.svd(X * s, compute_uv=False)[:4]
    np.testing.assert_allclose(S, S_ref, rtol=1e-6)
    # Same rank-4 approximation (sign-free comparison).
    np.testing.assert_allclose(U * S @ Vt, _rank_k(X * s, 4), atol=1e-6 * S[0])


def _rank_k(A, k):
    U, S, Vt = np.linalg.svd(A, full_matrices=False)
    return (U[:, :k] * S[:k]) @ Vt[:k]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nndsvd_matches_scikit_learn(dtype):
    # Well separated singular values make the truncated SVD unique up to sign,
    # and NNDSVD does not depend on the signs.
    rng = np.random.RandomState(1)
    U = np.linalg.qr(rng.rand(60, 5))[0]
    V = np.linalg.qr(rng.rand(40, 5))[0]
    X = np.abs((U * [50.0, 20.0, 10.0, 5.0, 2.0]) @ V.T).astype(dtype)
    Uh, S, Vt = _solvers.randomized_svd_weighted(
        X, np.ones(40, dtype=dtype), 4, np.random.RandomState(0)
    )
    W, H = _solvers.nndsvd(Uh.astype(dtype), S, Vt.astype(dtype))
    W_ref, H_ref = _initialize_nmf(X, 4, init="nndsvd", random_state=0)
    tol = 1e-6 if dtype == np.float64 else 2e-3
    np.testing.assert_allclose(W, W_ref, atol=tol * np.abs(W_ref).max())
    np.testing.assert_allclose(H, H_ref, atol=tol * np.abs(H_ref).max())


def test_plain_hals_follows_scikit_learn_cd_exactly():
    X = _planted(2)
    W0, H0 = _initialize_nmf(X, 5, init="nndsvda", random_state=0)
    d = np.ones(X.shape[1])
    W, H, n_iter, _ = _solvers.fit_hals(
        X, W0, H0, d, xnorm=float((X * X).sum()), max_iter=15, tol=0, inner=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = NMF(5, init="custom", solver="cd", tol=0, max_iter=15)
        W_ref = ref.fit_transform(X, W=W0.copy(), H=H0.copy())
    assert n_iter == 15
    np.testing.assert_allclose(W, W_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(H, ref.components_, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("inner", [False, True])
def test_hals_objective_history_is_exact_and_non_increasing(inner):
    X = _planted(3)
    rng = np.random.RandomState(0)
    d = rng.uniform(0.5, 2.0, X.shape[1])
    W0, H0 = rng.rand(40, 4), rng.rand(4, 30)
    xnorm = float(((X * X) @ d).sum())
    W, H, n_iter, info = _solvers.fit_hals(
        X, W0, H0, d, xnorm=xnorm, max_iter=30, tol=0, inner=inner
    )
    hist = np.array(info["objective"])
    assert hist.shape == (n_iter + 1,)
    assert np.all(np.diff(hist) <= 1e-10 * hist[0])
    assert hist[-1] == pytest.approx(_objective(X, W, H, d), rel=1e-10)
    assert hist[0] == pytest.approx(_objective(X, W0, H0, d), rel=1e-10)


def test_float32_objective_stays_accurate_near_a_perfect_fit():
    # In float32 the Gram form of the objective loses ~eps * ||X||^2; near a
    # perfect fit the solver must switch to the explicit residual.
    X = _planted(4, n=50, p=40, r=3, noise=1e-3, dtype=np.float32)
    rng = np.random.RandomState(0)
    d = np.ones(40, dtype=np.float32)
    xnorm = float((X.astype(np.float64) ** 2).sum())
    W, H, _, info = _solvers.fit_hals(
        X, rng.rand(50, 3).astype(np.float32), rng.rand(3, 40).astype(np.float32),
        d, xnorm=xnorm, max_iter=300, tol=1e-6,
    )  # fmt: skip
    exact = _objective(X.astype(np.float64), W, H, np.ones(40))
    assert info["objective"][-1] == pytest.approx(exact, rel=1e-3)
    assert exact < 1e-4 * xnorm


def test_weighted_columns_equal_scaled_problem():
    # sum_j d_j ||x_j - W h_j||^2 is NMF of X * sqrt(d) with H * sqrt(d).
    X = _planted(5)
    rng = np.random.RandomState(1)
    d = rng.uniform(0.1, 5.0, X.shape[1])
    sd = np.sqrt(d)
    W0, H0 = rng.rand(40, 4), rng.rand(4, 30)
    for solve in (_solvers.fit_hals, _solvers.fit_mu):
        Y = X * sd
        W1, H1, _, i1 = solve(
            X, W0, H0, d, xnorm=float(((X * X) @ d).sum()), max_iter=25, tol=0
        )
        W2, H2, _, i2 = solve(
            Y, W0, H0 * sd, np.ones(30), xnorm=float((Y * Y).sum()), max_iter=25, tol=0
        )
        np.testing.assert_allclose(W1, W2, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(H1 * sd, H2, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(i1["objective"], i2["objective"], rtol=1e-8)


def test_weighted_kl_equals_scaled_problem():
    # KL is homogeneous of degree 1: weight w == scaling the block by w.
    X = _planted(6) + 0.01
    rng = np.random.RandomState(2)
    d = rng.uniform(0.1, 5.0, X.shape[1])
    W0, H0 = rng.rand(40, 4), rng.rand(4, 30)
    W1, H1, _, i1 = _solvers.fit_mu(
        X, W0, H0, d, xnorm=_solvers.kl_xconst(X, d), beta_loss="kullback-leibler",
        max_iter=20, tol=0,
    )  # fmt: skip
    Y = X * d
    ones = np.ones(30)
    W2, H2, _, i2 = _solvers.fit_mu(
        Y, W0, H0 * d, ones, xnorm=_solvers.kl_xconst(Y, ones),
        beta_loss="kullback-leibler", max_iter=20, tol=0,
    )  # fmt: skip
    np.testing.assert_allclose(W1, W2, rtol=1e-7)
    np.testing.assert_allclose(H1 * d, H2, rtol=1e-7)
    assert i1["objective"][-1] == pytest.approx(i2["objective"][-1], rel=1e-8)
    div = _solvers.kl_column_divergence(X, W1, H1) @ d
    assert i1["objective"][-1] == pytest.approx(div, rel=1e-8)


@pytest.mark.parametrize("beta_loss", ["frobenius", "kullback-leibler"])
def test_mu_follows_scikit_learn_mu(beta_loss):
    X = _planted(7) + 0.01
    W0, H0 = _initialize_nmf(X, 4, init="nndsvda", random_state=0)
    d = np.ones(30)
    xnorm = (
        _solvers.kl_xconst(X, d) if beta_loss != "frobenius" else float((X * X).sum())
    )
    W, H, _, _ = _solvers.fit_mu(
        X, W0, H0, d, xnorm=xnorm, beta_loss=beta_loss, max_iter=20, tol=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = NMF(
            4, init="custom", solver="mu", beta_loss=beta_loss, tol=0, max_iter=20
        )
        W_ref = ref.fit_transform(X, W=W0.copy(), H=H0.copy())
    np.testing.assert_allclose(W, W_ref, rtol=1e-7)
    np.testing.assert_allclose(H, ref.components_, rtol=1e-7)


def test_penalties_match_scikit_learn_objective():
    # scikit-learn's cd with the same (already scaled) penalties, from the
    # same init, follows the same path as plain HALS.
    X = _planted(8)
    W0, H0 = _initialize_nmf(X, 4, init="nndsvda", random_state=0)
    n, p = X.shape
    alpha, l1_ratio = 0.01, 0.3
    l1_W, l2_W = p * alpha * l1_ratio, p * alpha * (1 - l1_ratio)
    l1_H, l2_H = n * alpha * l1_ratio, n * alpha * (1 - l1_ratio)
    W, H, _, _ = _solvers.fit_hals(
        X, W0, H0, np.ones(p), xnorm=float((X * X).sum()), l1_W=l1_W, l2_W=l2_W,
        l1_H=l1_H, l2_H=l2_H, max_iter=10, tol=0, inner=False,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = NMF(4, init="custom", solver="cd", tol=0, max_iter=10, alpha_W=alpha,
                  l1_ratio=l1_ratio)  # fmt: skip
        W_ref = ref.fit_transform(X, W=W0.copy(), H=H0.copy())
    np.testing.assert_allclose(W, W_ref, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(H, ref.components_, rtol=1e-8, atol=1e-12)


def test_solve_w_matches_scipy_nnls_and_is_row_independent():
    rng = np.random.RandomState(9)
    H = rng.rand(4, 25)
    X = rng.rand(30, 25)
    d = rng.uniform(0.5, 2.0, 25)
    W, _ = _solvers.solve_w(X, H, d, max_iter=2000, tol=1e-12)
    sd = np.sqrt(d)
    for i in range(30):
        ref, _ = nnls((H * sd).T, X[i] * sd)
        np.testing.assert_allclose(W[i], ref, atol=1e-7)
    W_part, _ = _solvers.solve_w(X[:7], H, d, max_iter=2000, tol=1e-12)
    # Rows are solved independently; only BLAS's blocking of X @ H.T, which
    # can change with the number of rows, may move the last bits.
    np.testing.assert_allclose(W_part, W[:7], rtol=0, atol=1e-14)


def test_sparse_input_gives_dense_result():
    X = _planted(10)
    X[X < 0.6] = 0
    rng = np.random.RandomState(3)
    d = rng.uniform(0.5, 2.0, 30)
    W0, H0 = rng.rand(40, 4), rng.rand(4, 30)
    xn = float(((X * X) @ d).sum())
    dense = _solvers.fit_hals(X, W0, H0, d, xnorm=xn, max_iter=10, tol=0)
    sparse = _solvers.fit_hals(
        sp.csr_matrix(X), W0, H0, d, xnorm=xn, max_iter=10, tol=0
    )
    np.testing.assert_allclose(dense[0], sparse[0], rtol=1e-10)
    np.testing.assert_allclose(dense[1], sparse[1], rtol=1e-10)


def test_dead_components_and_zero_data_stay_finite_and_zero():
    X = _planted(11)
    X[:5] = 0
    X[:, :4] = 0
    W0 = np.random.RandomState(0).rand(40, 4)
    W0[:, 1] = 0  # a dead component from the start
    H0 = np.random.RandomState(1).rand(4, 30)
    H0[1] = 0
    for solve in (_solvers.fit_hals, _solvers.fit_mu):
        W, H, _, info = solve(
            X, W0, H0, np.ones(30), xnorm=float((X * X).sum()), max_iter=20, tol=0
        )
        assert np.isfinite(W).all() and np.isfinite(H).all()
        obj = np.asarray(info["objective"])
        assert np.isfinite(obj).all()
        # All-zero rows and columns of X get exactly zero loadings, and the
        # objective never goes up on the way.
        assert np.all(W[:5] == 0) and np.all(H[:, :4] == 0), solve.__name__
        assert np.all(np.diff(obj) <= 1e-12 * obj[0]), solve.__name__
        assert W[5:].any() and H[:, 4:].any()
    W, _ = _solvers.solve_w(np.zeros((3, 30)), H0, np.ones(30))
    assert np.isfinite(W).all() and np.all(W == 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_stacked_eager_sweep_reads_only_its_own_block(dtype):
    # Three problems stacked (ranks 2, 3, 4): with bounds, each row's update
    # reads only its problem's block of G, so what lies outside the blocks
    # (NaN here) cannot leak in, and the result is the per-problem sweep.
    rng = np.random.default_rng(0)
    sizes, p = [2, 3, 4], 7
    R = sum(sizes)
    bounds, at = [], 0
    for r in sizes:
        bounds.append((at, at + r))
        at += r
    B = rng.random((R, 12)).astype(dtype)
    G = np.full((R, R), np.nan, dtype=dtype)
    for lo, hi in bounds:
        G[lo:hi, lo:hi] = B[lo:hi] @ B[lo:hi].T
    A = rng.random((R, p)).astype(dtype)
    A0 = A.copy()
    num = rng.random((R, p)).astype(dtype)
    want = A.copy()
    for lo, hi in bounds:
        part = want[lo:hi].copy()
        _solvers._hals_sweep_eager(part, num[lo:hi], G[lo:hi, lo:hi], 0.0, 0.0)
        want[lo:hi] = part
    _solvers._hals_sweep_eager(A, num, G, 0.0, 0.0, bounds)
    assert np.isfinite(A).all()
    np.testing.assert_allclose(A, want, rtol=1e-6)
    assert not np.allclose(A, A0)  # it did update


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_solve_w_batched_equals_one_solve_per_h(backend):
    rng = np.random.default_rng(1)
    X = rng.random((40, 30))
    d = rng.random(30) + 0.5
    Hs = [rng.random((r, 30)) for r in (2, 5, 1, 3)]
    Xb, db, Hb = X, d, Hs
    if backend == "torch":
        import torch

        Xb, db = torch.from_numpy(X), torch.from_numpy(d)
        Hb = [torch.from_numpy(H) for H in Hs]
    got = _solvers.solve_w_batched(Xb, Hb, db, max_iter=300, tol=1e-6)
    sweeps = []
    for H, (W, n) in zip(Hs, got):
        W_ref, n_ref = _solvers.solve_w(X, H, d, max_iter=300, tol=1e-6)
        assert n == n_ref
        np.testing.assert_allclose(np.asarray(W), W_ref, rtol=1e-10, atol=1e-12)
        sweeps.append(n)
    assert len(set(sweeps)) > 1  # the problems stopped at different sweeps
    empty = _solvers.solve_w_batched(Xb[:0], Hb, db)
    assert [tuple(W.shape) for W, _ in empty] == [(0, 2), (0, 5), (0, 1), (0, 3)]


def test_h_penalties_never_hand_the_sweeps_an_all_zero_vector():
    # The sweeps count any vector as a penalty without looking at it (no host
    # synchronisation on a GPU), so an all-zero one must come back as 0.0.
    passive = np.zeros(4)
    assert _solvers._h_penalties(passive, 0.5, 0.5) == (0.0, 0.0)
    d = np.array([0.0, 2.0, 4.0])
    l1, l2 = _solvers._h_penalties(d, 0.5, 0.0)
    assert l2 == 0.0
    np.testing.assert_allclose(l1, [0.0, 0.25, 0.125])
    # value / d_j underflowing to zero everywhere is no penalty either
    tiny = _solvers._h_penalties(np.array([1e30, 1e30], dtype=np.float32), 1e-30, 0)
    assert tiny == (0.0, 0.0)
    torch = pytest.importorskip("torch")
    l1, l2 = _solvers._h_penalties(torch.tensor([0.0, 2.0]), 0.0, 1.0)
    assert l1 == 0.0 and l2.tolist() == [0.0, 0.5]
    assert _solvers._h_penalties(torch.zeros(3), 1.0, 1.0) == (0.0, 0.0)
