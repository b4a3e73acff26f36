"""The randomized SVD behind the NNDSVD starts, several ranks at once.

``_solvers.randomized_svds_weighted`` stacks the sketches of several ranks so
that the products with X serve all of them; with ``batched=True`` (the
default on CUDA devices, forced here on the CPU) the orthonormalizations and
the small SVDs of all ranks are batched too (CholeskyQR2 over the padded
blocks, with a Householder fallback; eigenvectors of Gram matrices). Each
rank must get what a textbook one-rank randomized SVD from the same draws
gives, on NumPy and on torch, batched or not.
"""

from __future__ import annotations

import itertools
import types
import warnings

import numpy as np
import pytest
import torch
from _helpers import record_calls
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning

from sklearn_peek import CoupledNMF, _coupled_nmf, _solvers


def _reference_svd(X, s, k, rng, n_oversamples=10, n_iter="auto"):
    """Halko et al.'s range finder, one rank, Householder QR at every step."""
    n, p = X.shape
    ell = min(k + n_oversamples, n, p)
    if n_iter == "auto":
        n_iter = 7 if k < 0.1 * min(n, p) else 4
    Y = X * s
    Q = np.linalg.qr(Y @ rng.standard_normal(size=(p, ell)))[0]
    for _ in range(n_iter):
        Z = np.linalg.qr(Y.T @ Q)[0]
        Q = np.linalg.qr(Y @ Z)[0]
    Ub, S, Vt = np.linalg.svd(Q.T @ Y, full_matrices=False)
    return (Q @ Ub)[:, :k], S[:k], Vt[:k]


def _data(seed=0, n=80, p=70, rank=12, dtype=np.float64):
    rng = np.random.RandomState(seed)
    X = rng.rand(n, rank) @ rng.rand(rank, p) + 0.05 * rng.rand(n, p)
    return X.astype(dtype), np.linspace(0.5, 2.0, p).astype(dtype)


def _split(out, ks):
    U, S, Vt = (np.asarray(a, dtype=np.float64) for a in out)
    at = np.cumsum([0, *ks])
    return [(U[:, a:b], S[a:b], Vt[a:b]) for a, b in itertools.pairwise(at)]


@pytest.mark.parametrize(
    "backend", ["numpy", "torch", "torch batched", "torch batched in row chunks"]
)
def test_stacked_sketches_equal_one_rank_at_a_time(backend, monkeypatch):
    if backend.endswith("row chunks"):  # 17 rows per batch: 5 batches
        monkeypatch.setattr(_solvers, "_TORCH_CHUNK_ELEMENTS", 7 * 5 * 22)
    X, s = _data()
    # min(n, p) = 70: ranks below 7 get 7 power iterations, the others 4 (one
    # schedule: the ranks leave the stack as their iterations end); the order
    # of ks is kept in the output.
    ks = [5, 1, 9, 3, 12]
    rngs = [np.random.RandomState(10 + k) for k in ks]
    Xb, sb = (X, s) if backend == "numpy" else map(torch.from_numpy, (X, s))
    got = _solvers.randomized_svds_weighted(
        Xb, sb, ks, rngs, batched="batched" in backend
    )
    assert [type(a) for a in got] == [type(Xb)] * 3
    for k, (U, S, Vt) in zip(ks, _split(got, ks)):
        Ur, Sr, Vr = _reference_svd(X, s, k, np.random.RandomState(10 + k))
        assert U.shape == (80, k) and Vt.shape == (k, 70)
        np.testing.assert_allclose(S, Sr, rtol=1e-10)
        # singular vectors up to a joint sign: compare the products
        np.testing.assert_allclose((U * S) @ Vt, (Ur * Sr) @ Vr, atol=1e-10 * Sr[0])
        np.testing.assert_allclose(U.T @ U, np.eye(k), atol=1e-12)
        np.testing.assert_allclose(Vt @ Vt.T, np.eye(k), atol=1e-12)


@pytest.mark.parametrize("batched", [False, True])
def test_stacked_sketches_in_float32_on_torch(batched):
    X, s = _data(1, dtype=np.float32)
    ks = [2, 8]
    rngs = [np.random.RandomState(0), np.random.RandomState(0)]
    Xt, st = torch.from_numpy(X), torch.from_numpy(s)
    got = _solvers.randomized_svds_weighted(Xt, st, ks, rngs, batched=batched)
    assert all(a.dtype == torch.float32 for a in got)
    X64, s64 = X.astype(np.float64), s.astype(np.float64)
    for k, (U, S, Vt) in zip(ks, _split(got, ks)):
        _, Sr, _ = _reference_svd(X64, s64, k, np.random.RandomState(0))
        np.testing.assert_allclose(S, Sr, rtol=1e-5)
        np.testing.assert_allclose(
            (U * S) @ Vt, _reference_product(X64 * s64, k), atol=1e-5 * Sr[0]
        )


def _reference_product(A, k):
    U, S, Vt = np.linalg.svd(A, full_matrices=False)
    return (U[:, :k] * S[:k]) @ Vt[:k]


def _near_dependent(rng, n, cond):
    """Four columns, the last one the first plus 1/cond of noise."""
    a = rng.randn(n, 3)
    return np.hstack([a, a[:, :1] + rng.randn(n, 1) / cond])


def test_batched_orthonormalization_flags_the_blocks_it_cannot_take():
    rng = np.random.RandomState(0)
    n = 60
    generic = rng.rand(n, 6)
    # cond ~ 2e4: one CholeskyQR round leaves ~1e-8 of non-orthogonality,
    # the second rounding; the diagonal ratio (~1e4) keeps it off the fallback
    moderate = _near_dependent(rng, n, 1e4)
    # cond ~ 2e7: the Cholesky factor exists, but its diagonal spans more
    # than _CHOLQR_MAX_RATIO: flagged
    ratio = _near_dependent(rng, n, 1e7)
    deficient = np.hstack([rng.rand(n, 2)] * 2)  # rank 2 in 4 columns
    zero = np.zeros((n, 2))
    Y = np.hstack([generic, moderate, ratio, deficient, zero])
    blocks = _solvers._Blocks([6, 4, 4, 4, 2], torch.from_numpy(Y), batched=True)
    Q, ok = _solvers._orth_blocks(torch.from_numpy(Y), blocks)
    assert ok.tolist() == [True, True, False, False, False]
    Q = Q.numpy()
    for (lo, hi), fine in zip(blocks.bounds, ok.tolist()):
        if fine:
            Qi, Yi = Q[:, lo:hi], Y[:, lo:hi]
            np.testing.assert_allclose(Qi.T @ Qi, np.eye(hi - lo), atol=1e-13)
            # the basis spans the block: projecting it changes nothing
            np.testing.assert_allclose(Qi @ (Qi.T @ Yi), Yi, atol=1e-12)
    # the Q of a QR, up to the signs of its columns
    Qr = np.linalg.qr(generic)[0]
    np.testing.assert_allclose(np.abs(Q[:, :6].T @ Qr), np.eye(6), atol=1e-12)


def test_a_flagged_rank_is_redone_with_householder_qrs():
    # X of rank 3: the sketches of ranks 5 and 9 (15 and 19 columns) are
    # rank-deficient, so their CholeskyQR fails; rank 1's (11 columns, of a
    # matrix of rank 3) too. Each is redone alone from its own sketch.
    rng = np.random.RandomState(1)
    X = rng.rand(60, 3) @ rng.rand(3, 40)
    s = np.ones(40)
    ks = [1, 5, 9]
    got = _solvers.randomized_svds_weighted(
        torch.from_numpy(X), torch.from_numpy(s), ks,
        [np.random.RandomState(k) for k in ks], batched=True,
    )  # fmt: skip
    ref = _solvers.randomized_svds_weighted(
        torch.from_numpy(X), torch.from_numpy(s), ks,
        [np.random.RandomState(k) for k in ks], batched=False,
    )  # fmt: skip
    assert all(np.isfinite(a.numpy()).all() for a in got)
    for (U, S, Vt), (Ur, Sr, Vr) in zip(_split(got, ks), _split(ref, ks)):
        # the three leading triplets are the data's; the rest is noise
        m = min(3, S.size)
        np.testing.assert_allclose(S[:m], Sr[:m], rtol=1e-10)
        np.testing.assert_allclose(
            (U[:, :m] * S[:m]) @ Vt[:m], (Ur[:, :m] * Sr[:m]) @ Vr[:m], atol=1e-10
        )


@pytest.mark.parametrize("batched", [False, True])
def test_exactly_low_rank_data_gives_finite_unit_vectors(batched):
    rng = np.random.RandomState(3)
    X = rng.rand(40, 2) @ rng.rand(2, 30)
    U, S, Vt = _solvers.randomized_svds_weighted(
        torch.from_numpy(X),
        torch.ones(30, dtype=torch.float64),
        [5],
        [rng],
        batched=batched,
    )
    U, S, Vt = U.numpy(), S.numpy(), Vt.numpy()
    assert np.isfinite(U).all() and np.isfinite(Vt).all()
    assert S[2:].max() <= 1e-10 * S[0]
    np.testing.assert_allclose((U * S) @ Vt, X, atol=1e-10 * np.abs(X).max())
    np.testing.assert_allclose(np.linalg.norm(Vt, axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("init", [None, "nndsvdar", "random"])
def test_stacked_starts_equal_one_start_per_model(backend, init):
    rng = np.random.RandomState(4)
    X = np.hstack([rng.rand(60, 20), 5 * rng.rand(60, 40)])
    blocks = [("a", 20), ("b", 40)]
    # a rank beyond min(n, p) would need init='random'; 20 is the largest here
    ranks = [3, 1, 7, 20] if init != "random" else [2, 5]
    Xb = X if backend == "numpy" else torch.from_numpy(X)
    base = CoupledNMF(blocks=blocks, init=init, random_state=np.random.RandomState(5))
    base.set_params(n_components=ranks[0])._validate_params()
    Xp, _slices, _w, d, _sq = base._prepare_fit(Xb)
    models = [clone(base).set_params(n_components=r) for r in ranks]
    stacked = _coupled_nmf._initialize_ranks(models, Xp, d)
    for r, (W0, H0, k) in zip(ranks, stacked):
        ref = clone(base).set_params(n_components=r)
        W1, H1, _ = ref._initialize(Xp, None, None, d, False)
        assert k == r and W0.shape == (60, r) and H0.shape == (r, 60)
        np.testing.assert_allclose(W0, W1, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(H0, H1, rtol=1e-9, atol=1e-12)


def test_fit_ranks_float32_torch_matches_separate_fits():
    X, _ = _data(2, n=90, p=50, rank=6, dtype=np.float32)
    est = CoupledNMF(blocks=[("a", 10), ("b", 40)], random_state=0, max_iter=60)
    Xt = torch.from_numpy(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        models, _ = _coupled_nmf.fit_ranks(est, Xt, [2, 6, 4])
        refs = [clone(est).set_params(n_components=r).fit(Xt) for r in (2, 6, 4)]
    for m, ref in zip(models, refs):
        assert m.reconstruction_err_ == pytest.approx(ref.reconstruction_err_, rel=1e-3)
        assert abs(m.n_iter_ - ref.n_iter_) <= 2


@pytest.mark.parametrize("batched", [False, True])
def test_ranks_with_fewer_power_iterations_share_the_passes_over_x(
    batched, monkeypatch
):
    # ranks below 0.1 * min(n, p) = 7 run 7 power iterations, the others 4:
    # one schedule, so 1 + 2 * 7 + 1 products with X in all (two separate
    # groups would take 16 + 10)
    X, s = _data()
    calls = []
    for name in ("_h_xt", "_w_x"):
        record_calls(monkeypatch, _solvers, name, into=calls)
    Xt, st = torch.from_numpy(X), torch.from_numpy(s)
    ks = [5, 1, 9, 3, 12]
    rngs = [np.random.RandomState(10 + k) for k in ks]
    _solvers.randomized_svds_weighted(Xt, st, ks, rngs, batched=batched)
    assert len(calls) == 16 and all(B.shape == X.shape for _, B in calls)


def test_the_sketches_ask_the_default_with_their_number_of_ranks(monkeypatch):
    # The decision below is taken where the sketches are made: one rank
    # (a single fit) asks with 1, a stacked sweep with all its ranks.
    asked = record_calls(monkeypatch, _solvers, "_batched_default")
    X = torch.rand(40, 30, dtype=torch.float64)
    s = torch.ones(30, dtype=torch.float64)
    _solvers.randomized_svd_weighted(X, s, 3, np.random.RandomState(0))
    ks = [1, 2, 4]
    rngs = [np.random.RandomState(k) for k in ks]
    _solvers.randomized_svds_weighted(X, s, ks, rngs)
    models = [CoupledNMF(k, random_state=0) for k in ks]
    for m in models:
        m._validate_params()
    _coupled_nmf._initialize_ranks(models, X, np.ones(30))
    assert [n_ranks for _, n_ranks in asked] == [1, 3, 3]


def test_only_a_stack_of_ranks_on_cuda_is_batched_by_default():
    # One rank takes a Householder QR and an SVD per step (faster for one
    # rank on a GPU too); a stack of ranks on a CUDA device is batched; a
    # CPU never is. The decision reads only the array's is_cuda flag.
    cuda_like = types.SimpleNamespace(is_cuda=True)
    assert not _solvers._batched_default(cuda_like, 1)
    assert _solvers._batched_default(cuda_like, 2)
    assert not _solvers._batched_default(torch.zeros(2, 2), 30)
    assert not _solvers._batched_default(np.zeros((2, 2)), 30)
