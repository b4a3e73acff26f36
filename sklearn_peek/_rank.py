"""RankQualityScorer: rank sweeps of coupled (input, layer) factorizations.

The estimator validates its parameters and its input, cuts the work into
independent tasks, runs them with :class:`joblib.Parallel` and turns the
results into ``rank_``, ``cv_results_`` and ``curves_``. The criteria
themselves are plain functions in :mod:`sklearn_peek._criteria`; the model is
:class:`sklearn_peek.CoupledNMF`.

Determinism. Every fit gets its own seed, derived from ``random_state`` and
the fit's identity (criterion, layer, fold, rank, restart) only, and the
tasks are cut from ``ranks`` and ``cv`` only. Neither depends on ``n_jobs``
or on the joblib backend, so neither do the results.
"""

from __future__ import annotations

import time
import zlib
from numbers import Integral, Real
from typing import ClassVar

import numpy as np
from joblib import Parallel, delayed, effective_n_jobs
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from sklearn_peek import _criteria, _solvers
from sklearn_peek._backend import (
    _torch,
    available_memory,
    compute_tensor,
    device_free_memory,
    fmt_bytes,
    is_torch_tensor,
    numpy_dtype,
    select_compute_device,
    to_numpy,
)
from sklearn_peek._coupled_nmf import (
    CoupledNMF,
    blocks_from_feature_names,
    check_ranks,
    resolve_blocks,
)
from sklearn_peek._progress import collect, progress_bar
from sklearn_peek._validation import (
    HasMethods,
    Interval,
    StrOptions,
    caller_stacklevel,
    check_finite_nonneg,
    check_no_underflow,
    check_numeric_columns,
    check_weights,
    did_you_mean,
    is_integral,
    muted,
    string_feature_names,
    validate_params,
    warn,
)

_CRITERIA = _criteria.CRITERIA


class SweepLimitError(ValueError):
    """``cv`` or the largest rank is more than the data of ``fit`` allows.

    ``param`` ("cv" or "ranks") names the setting, ``limit`` its largest
    allowed value for these data (for "cv": the number of samples), and
    ``reason`` (ranks) which layer's matrix sets it. For "ranks", ``rows`` is
    the number of rows a fit sees (the training rows of a fold under bcv) and
    ``columns`` maps each layer to the columns of its matrix: the limit is the
    smallest of them, so a caller can tell whether more samples would help.
    The command line turns these into advice about its own options.
    """

    def __init__(self, param, limit, message, reason=None, rows=None, columns=None):
        # All in args, so that pickle and copy can rebuild the error.
        super().__init__(param, limit, message, reason, rows, columns)
        self.param, self.limit, self.message = param, limit, message
        self.reason, self.rows, self.columns = reason, rows, columns

    def __str__(self):
        return self.message


_COUPLINGS = ("input", "none", "all")
_SELECTIONS = ("one_se", "max")
_INPUT = "input"
_ALL = "all"
# ranks=None: the ranks swept by default
_DEFAULT_RANKS = range(1, 31)
# Parameters the scorer passes on to every CoupledNMF, checked up front with
# CoupledNMF's own constraints under the scorer's name (max_iter and init have
# stricter ones here: no "custom" init, which the warm starts use).
_PASSED_ON = ("block_weights", "solver", "tol")


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------
def _seed(base, *keys):
    """A 31-bit seed from a base seed and non-negative integer keys."""
    ss = np.random.SeedSequence([int(base), *(int(k) for k in keys)])
    return int(ss.generate_state(1)[0] & 0x7FFFFFFF)


def _layer_key(name):
    """A seed key for the layer ``name``: its name, not its place in the list.

    A layer's fits then start alike whichever other layers are probed and in
    whatever order (keyed by position, adding a layer in front changed every
    later layer's starts and so, at times, its selected rank). CRC-32 is
    stable across processes and Python versions, unlike ``hash``.
    """
    return zlib.crc32(str(name).encode("utf-8"))


def _check_block_sizes(block_sizes):
    """``block_sizes`` as a list of (str, int) pairs, checked as ``fit`` checks
    blocks (:func:`resolve_blocks`: unique names without ``"__"``, sizes >= 1),
    but named pairs only (a layer's limit is reported under its name)."""
    items = list(block_sizes) if isinstance(block_sizes, (list, tuple)) else []
    problem = None
    if not items or not all(isinstance(it, (tuple, list)) for it in items):
        problem = "expected a non-empty list of (name, size) pairs"
    else:
        try:
            names, slices = resolve_blocks(items, None)
        except ValueError as exc:
            problem = str(exc)
    if problem is not None:
        raise ValueError(
            f"block_sizes={block_sizes!r} is not understood ({problem}); expected "
            "(name, size) pairs with unique names and sizes >= 1, such as "
            "LayerActivationExtractor.block_sizes_."
        )
    return [(name, sl.stop - sl.start) for name, sl in zip(names, slices)]


def _rank_chains(ranks, warm_start):
    """Cut the sorted ranks into chains of consecutive ranks.

    Within a chain, each rank starts from the previous rank's factors. The
    cost of a fit grows about linearly with the rank, so chains are cut to a
    cost budget of ``2 * max(ranks)`` (sum of their ranks): about equal work
    per task, which keeps two or more workers busy even with a single layer
    and few folds. The cut depends on ``ranks`` alone.
    """
    ranks = [int(r) for r in ranks]
    if not warm_start:
        return [[r] for r in ranks]
    budget = 2 * max(ranks)
    chains, cur, cost = [], [], 0
    for r in ranks:
        if cur and cost + r > budget:
            chains.append(cur)
            cur, cost = [], 0
        cur.append(r)
        cost += r
    chains.append(cur)
    return chains


#: Warm-start chains on a torch device run in lockstep (_lockstep_task);
#: False runs one task per chain there too (for benchmarks and tests).
_LOCKSTEP = True

#: Ranks per stacked task on the host (see _rank_groups).
_RANKS_PER_GROUP = 3


def _rank_groups(ranks, per_group=None):
    """Cut the sorted ranks into the stacked runs of cold fits on the host.

    One stacked run (:func:`fit_ranks`) shares every pass over X among its
    ranks, which on the CPU made a cold bcv sweep 1.50x faster than one fit
    per rank (``benchmarks/bench_rank_sweep.py``); smaller groups leave more
    tasks for the workers (3 keeps most of the gain, and the balance on many
    workers: ``benchmarks/bench_rank_groups.py``). Ranks are dealt
    round-robin into ``ceil(len(ranks) / per_group)`` groups, so the
    groups cost about the same; the cut depends on ``ranks`` alone (not on
    ``n_jobs``), which keeps the results the same for every number of
    workers. ``per_group``: at most this many ranks per group (None:
    ``_RANKS_PER_GROUP``; the benchmark tries others).
    """
    if per_group is None:
        per_group = _RANKS_PER_GROUP
    ranks = [int(r) for r in ranks]
    n_groups = -(-len(ranks) // per_group)
    return [ranks[g::n_groups] for g in range(n_groups)]


def _new_components(X, W, H, col_w, k, seed):
    """Initial values for ``k`` new components from the weighted residual.

    NNDSVD-style: the leading singular triplets of ``(X - W H) diag(sqrt w)``
    (:func:`~sklearn_peek._solvers.randomized_svd_weighted` with two power
    iterations, in the dtype of ``X``: a few passes over the residual, cheaper
    than one solver iteration), each replaced by the sign-consistent
    non-negative part that carries more energy (not
    :func:`~sklearn_peek._solvers.nndsvd`, which takes the absolute value of
    the first pair: the leading vectors of a residual are not non-negative);
    zeros are filled with a small positive value so that the solver can move
    them.
    """
    dtype = numpy_dtype(X)
    sw = np.sqrt(col_w).astype(dtype)
    if is_torch_tensor(X):
        # On X's device: the residual and the products of the SVD (the
        # passes over the data); the small factors come back to the host.
        # One n x m temporary: X - W @ H in one product.
        Wd, Hd = _solvers._from_host(W, X), _solvers._from_host(H, X)
        R = X.addmm(Wd, Hd, alpha=-1)
        svd = _solvers.randomized_svd_weighted(
            R, _solvers._from_host(sw, X), k, np.random.default_rng(seed),
            n_oversamples=5, n_iter=2,
        )  # fmt: skip
        steps = _solvers._row_steps(*R.shape, R)
        pos = [R[a:b].clamp(min=0).sum(dim=0) for a, b in steps]
        parts = [*svd, _torch().stack(pos).sum(dim=0)]
        # one read back for U, S, Vt and the positive column sums
        flat = _solvers._host(_solvers._concat([a.reshape(-1) for a in parts]))
        ends = np.cumsum([a.numel() for a in parts])[:-1]
        U, S, Vt, col_pos = (
            chunk.reshape(tuple(a.shape))
            for a, chunk in zip(parts, np.split(flat, ends))
        )
    else:
        # One n x m array, as on the device: W @ H, then X - W @ H in its
        # place (a copy of X less a product made two); the same values.
        R = W.astype(dtype) @ H.astype(dtype)
        np.subtract(X, R, out=R)
        U, S, Vt = _solvers.randomized_svd_weighted(
            R, sw, k, np.random.default_rng(seed), n_oversamples=5, n_iter=2
        )
        U, S, Vt = (a.astype(np.float64) for a in (U, S, Vt))
        col_pos = np.maximum(R, 0, out=R).sum(axis=0)  # R is not needed again
    n, m = R.shape
    # mean of the positive part of the weighted residual: clip(R) * sw
    pos_mean = float(col_pos @ sw) / max(n * m, 1)
    avg = np.sqrt(max(pos_mean, 1e-12) / max(k, 1))
    Wn = np.empty((n, k))
    Hn = np.empty((k, m))
    for j in range(k):
        u, v = U[:, j], Vt[j]
        up, un = np.clip(u, 0, None), np.clip(-u, 0, None)
        vp, vn = np.clip(v, 0, None), np.clip(-v, 0, None)
        pos = np.linalg.norm(up) * np.linalg.norm(vp)
        neg = np.linalg.norm(un) * np.linalg.norm(vn)
        a, b, s = (up, vp, pos) if pos >= neg else (un, vn, neg)
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        if s <= 0 or na == 0 or nb == 0:
            Wn[:, j], Hn[j] = avg, avg
            continue
        scale = np.sqrt(S[j] * s)
        Wn[:, j] = scale * a / na
        Hn[j] = scale * b / nb
    Wn[Wn < 1e-12] = avg * 0.01
    Hn[Hn < 1e-12] = avg * 0.01
    # undo the column weighting: the model is fitted on X itself
    Hn /= np.where(sw > 0, sw, 1.0).astype(np.float64)[None, :]
    return Wn, Hn


def _make_model(n_components, blocks, params, seed, init=None):
    from sklearn_peek._coupled_nmf import CoupledNMF

    return CoupledNMF(
        n_components=n_components,
        blocks=blocks,
        block_weights=params["block_weights"],
        solver=params["solver"],
        init=init if init is not None else params["init"],
        max_iter=params["max_iter"],
        tol=params["tol"],
        random_state=seed,
        device=params["device"],
    )


def _convergence_muted():
    """The fits' ConvergenceWarnings, muted in this thread: convergence is
    reported per fit in ``cv_results_`` and summed up by the scorer in one
    warning (other warnings pass on)."""
    return muted(ConvergenceWarning)


def _quiet_fit(model, X, W=None, H=None):
    with _convergence_muted():
        if W is None:
            Wf = model.fit_transform(X)
        else:
            Wf = model.fit_transform(X, W=W.astype(X.dtype), H=H.astype(X.dtype))
    return Wf, model._converged


def _record(model, fit_time, converged, X_test, col_sq, col_w, score=None):
    """What a bcv, elbow or energy task reports about one fitted model.

    With ``X_test``, the held-out score on it (bcv; ``score`` when the caller
    computed it already); otherwise the squared weighted error of the fit and
    the squared weighted norm of the data (``col_sq``: its squared column
    norms; ``col_w``: the column weights).
    """
    rec = {
        "rank": int(model.n_components_),
        "fit_time": fit_time,
        "n_iter": int(model.n_iter_),
        "converged": bool(converged),
    }
    if X_test is not None:
        rec["score"] = float(model.score(X_test) if score is None else score)
    else:
        rec["sq_err"] = float(model.reconstruction_err_) ** 2
        rec["sq_norm"] = float(col_sq @ col_w)
    return rec


# --------------------------------------------------------------------------
# tasks (module level so that every joblib backend can ship them)
# --------------------------------------------------------------------------
def _submatrix(X, rows, cols):
    """``X[rows][:, cols]`` in one indexing step, so one copy (None: all).

    ``rows``: an index array; ``cols``: an index array or a slice (the same
    type as X's: NumPy or torch on X's device).
    """
    if rows is None:
        return X if cols is None else X[:, cols]
    if cols is None or isinstance(cols, slice):
        return X[rows] if cols is None else X[rows, cols]
    if is_torch_tensor(X):
        return X[rows[:, None], cols]
    return X[np.ix_(rows, cols)]


def _chain_task(
    X, cols, blocks, train, test, chain, model_seed, svd_seeds, params, warm
):
    """Fit the ranks of one chain on ``X[train][:, cols]``, warm-starting.

    Every model of the chain gets ``random_state=model_seed``: for bcv this
    fixes the column split of :meth:`CoupledNMF.score` for the whole fold, so
    all ranks of a fold are scored on the same held-out columns. With ``test``
    given, each rank is scored on the test rows with ``CoupledNMF.score``;
    otherwise the weighted reconstruction error of the fit is recorded.
    """
    Xtr = np.asarray(_submatrix(X, train, cols))
    Xte = None if test is None else np.asarray(_submatrix(X, test, cols))
    col_sq = _solvers.column_sums64(Xtr) if test is None else None
    out = []
    W = H = col_w = None
    for r, svd_seed in zip(chain, svd_seeds):
        t0 = time.perf_counter()
        if warm and W is not None:
            Wn, Hn = _new_components(Xtr, W, H, col_w, r - W.shape[1], svd_seed)
            model = _make_model(r, blocks, params, model_seed, init="custom")
            W, conv = _quiet_fit(model, Xtr, np.hstack([W, Wn]), np.vstack([H, Hn]))
        else:
            model = _make_model(r, blocks, params, model_seed)
            W, conv = _quiet_fit(model, Xtr)
        H = model.components_
        col_w = model._fitted_column_weights()
        out.append(_record(model, time.perf_counter() - t0, conv, Xte, col_sq, col_w))
    return out


def _task_data(X, cols, train, test):
    """``(X_train, X_test, col_sq)`` of a task, on X's side (NumPy or device).

    ``col_sq``: the squared column norms of X_train when there is no test
    part (elbow, energy), else None.
    """
    if is_torch_tensor(X):
        import torch

        def index(a):
            if a is None or isinstance(a, slice):
                return a
            return torch.as_tensor(a, device=X.device)

        cols, train, test = index(cols), index(train), index(test)
    Xtr = _submatrix(X, train, cols)
    Xte = None if test is None else _submatrix(X, test, cols)
    col_sq = _solvers.column_sums64(Xtr) if test is None else None
    return Xtr, Xte, col_sq


def _row_block_sq(X, sizes):
    """Squared norm of every block in every row: ``(n, len(sizes))`` float64
    NumPy, one pass over X (NumPy or tensor; a tensor is read back once)."""
    n, p = X.shape
    member = np.zeros((p, len(sizes)))  # column j belongs to block b
    for b, (lo, hi) in enumerate(_solvers._bounds(sizes)):
        member[lo:hi, b] = 1.0
    member = _solvers._from_host(member, _solvers._to64(X[:0]))
    parts = []
    for s, e in _solvers._row_steps(n, p, X):
        c = _solvers._to64(X[s:e])
        parts.append((c * c) @ member)
    if not parts:
        return np.zeros((0, len(sizes)))
    return _solvers._host(_solvers._concat(parts))


def _input_features(X):
    """``n_features_in_`` (a 2-D X) and ``feature_names_in_``
    (:func:`~sklearn_peek._validation.string_feature_names`), as a dict of the
    attributes to set."""
    out = {}
    shape = getattr(X, "shape", None)
    if shape is not None and len(shape) == 2:
        out["n_features_in_"] = int(shape[1])
    names = string_feature_names(X)
    if names is not None:
        out["feature_names_in_"] = names
    return out


def _check_live_blocks(sq, blocks, used, n, X):
    """Under ``block_weights="norm"``, refuse a block used by the sweep that
    is all zeros on all ``n`` rows (``sq``: :func:`_row_block_sq`): it has no
    norm to divide by (and a dead layer nothing to factorize). A block of
    values whose squares underflow is said to, not called zeros."""
    totals = sq.sum(axis=0)
    dead = [nm for (nm, _), t in zip(blocks, totals) if nm in used and not t > 0]
    names, spans = resolve_blocks(blocks, None)
    check_no_underflow(
        X,
        [(nm, sl) for nm, sl in zip(names, spans) if nm in dead],
        where="RankQualityScorer.fit",
    )
    if dead:
        live = [nm for nm, _ in blocks if nm in used and nm not in dead]
        layers = [nm for nm in live if nm != _INPUT]
        fix = ""
        if layers and _INPUT not in dead:
            fix = f" Leave it out: layers={layers!r}."
        what = "an input with nothing in it" if _INPUT in dead else "a dead layer"
        raise ValueError(
            f"RankQualityScorer.fit: block(s) {dead!r} of X are all zeros on the "
            f"{n} samples ({what}: nothing to factorize), and "
            "block_weights='norm' divides every block by its squared norm; "
            f"expected every block the sweep uses to have a non-zero entry.{fix}"
        )


def _fold_weights(sq, blocks, cb, train):
    """Explicit block weights for a bcv fold whose training rows leave a block
    all zeros, or None when ``"norm"`` can be used as it is.

    ``"norm"`` divides each block by its squared norm on the training rows,
    which is zero for a layer that fires on a few samples only, none of them
    in this fold. Such a block gets the weight the other folds give it on
    average, ``n / (n_train ||X_b||^2)`` (its norm on all the rows), and
    the other blocks their ``"norm"`` weight (other weights need nothing:
    the caller asks only under ``"norm"``).
    """
    index = {nm: i for i, (nm, _) in enumerate(blocks)}
    cols = [index[nm] for nm, _ in cb]
    on_train = sq[train][:, cols].sum(axis=0)
    if (on_train > 0).all():
        return None
    full = sq[:, cols].sum(axis=0)
    scale = sq.shape[0] / len(train)
    return [1.0 / t if t > 0 else scale / f for t, f in zip(on_train, full)]


def _check_device_memory(dev, n, p, m, lockstep):
    """Raise MemoryError when a sweep's data would not fit on ``dev``.

    The stacked sweeps keep X (n x p, float32) on the device for the whole
    fit, and a task adds at most its layer's training and test rows (n x m,
    m the widest layer's matrix) and, with warm starts, the residual of the
    training rows (at most n x m). Only CUDA devices are checked
    (``device_free_memory``).
    """
    free = device_free_memory(dev)
    need = 4 * n * (p + (2 if lockstep else 1) * m)
    if free is not None and need > 0.9 * free:
        raise MemoryError(
            f"RankQualityScorer.fit: the sweep on device={str(dev)!r} needs about "
            f"{fmt_bytes(need)} (X of {n} x {p} float32 and, per task, a layer's "
            f"{n} x {m} columns{' twice' if lockstep else ''}), more than 90% of "
            f"the {fmt_bytes(free)} free there. Ways out: device=None "
            "(the CPU, with n_jobs), pooling='avg' or 'max' in the extractor, "
            "fewer layers or fewer samples."
        )


def _lockstep_task(X, cols, blocks, train, test, chains, model_seed, svd_seeds, params):
    """The warm-start chains of one (layer, fold), in lockstep.

    Step j fits the j-th rank of every chain still running, in one stacked
    solver run (the ranks of a step are distinct, and the chains share
    X_train): as many runs as the longest chain has ranks, instead of one
    per rank. Each rank starts as in :func:`_chain_task` (the first of a
    chain cold, the others from the previous rank's factors and
    :func:`_new_components`), so the records equal those of one
    ``_chain_task`` per chain, to float rounding. Used on a torch device,
    where X is moved there once and small fits are bound by kernel launches;
    the host keeps one task per chain, for its workers. ``svd_seeds[c]``:
    the seeds of chain c's ranks. Returns the records of all the chains.
    """
    from sklearn_peek._coupled_nmf import _fit_stacked

    Xtr, Xte, col_sq = _task_data(X, cols, train, test)
    prev = {}  # chain -> (W, H, column weights) of its last fitted rank
    out = []
    for step in range(max(len(chain) for chain in chains)):
        live = [c for c, chain in enumerate(chains) if step < len(chain)]
        models, starts = [], []
        t0 = time.perf_counter()
        for c in live:
            r = chains[c][step]
            if c not in prev:
                models.append(_make_model(r, blocks, params, model_seed))
                starts.append(None)
                continue
            W, H, col_w = prev[c]
            Wn, Hn = _new_components(
                Xtr, W, H, col_w, r - W.shape[1], svd_seeds[c][step]
            )
            models.append(_make_model(r, blocks, params, model_seed, init="custom"))
            starts.append((np.hstack([W, Wn]), np.vstack([H, Hn])))
        with _convergence_muted():
            Ws = _fit_stacked(models, Xtr, starts)
        out += _stacked_records(models, time.perf_counter() - t0, Xte, col_sq)
        for c, m, W in zip(live, models, Ws):
            if step + 1 < len(chains[c]):  # the chain goes on from this rank
                prev[c] = (to_numpy(W), m.components_, m._fitted_column_weights())
    return out


def _stacked_records(models, elapsed, Xte, col_sq):
    """The records of models fitted in one stacked run taking ``elapsed`` s.

    ``fit_time`` of a model is its share of the run by rank x iterations;
    the held-out solves of bcv (``Xte``) share one stacked run too.
    """
    from sklearn_peek._coupled_nmf import _held_out_scores

    work = [m.n_components_ * max(m.n_iter_, 1) for m in models]
    scores = [None] * len(models) if Xte is None else _held_out_scores(models, Xte)
    return [
        _record(
            m,
            elapsed * w / sum(work),
            m._converged,
            Xte,
            col_sq,
            m._fitted_column_weights(),
            score,
        )
        for m, w, score in zip(models, work, scores)
    ]


def _batched_task(X, cols, blocks, train, test, ranks, model_seed, params):
    """:func:`_chain_task` without warm starts, all ranks in one solver run.

    The ranks share every product with X (:func:`fit_ranks`); the models and
    records are those of one cold ``_chain_task`` per rank, to float rounding.
    ``X`` may be a torch tensor already on the device. ``fit_time`` of a rank
    is the run's time apportioned by rank x iterations.
    """
    from sklearn_peek._coupled_nmf import fit_ranks

    Xtr, Xte, col_sq = _task_data(X, cols, train, test)
    t0 = time.perf_counter()
    with _convergence_muted():
        models, _ = fit_ranks(
            _make_model(ranks[0], blocks, params, model_seed), Xtr, ranks
        )
    return _stacked_records(models, time.perf_counter() - t0, Xte, col_sq)


# Bytes per pair of samples at the peak of one stability task: the float64
# consensus matrix (8), the condensed distances (4, half the pairs) and
# scipy's copies of them in linkage and cophenet, with margin.
_CONSENSUS_BYTES_PER_PAIR = 24


def _check_consensus_memory(n, workers):
    """Refuse a stability sweep whose n x n matrices would not fit in memory."""
    need = _CONSENSUS_BYTES_PER_PAIR * float(n) * n * workers
    avail = available_memory()
    if avail is not None and need > 0.5 * avail:
        raise MemoryError(
            f"criterion='stability' builds n_samples x n_samples matrices for "
            f"every rank: with n_samples={n} and {workers} parallel task(s) that "
            f"needs about {fmt_bytes(need)}, more than half of the "
            f"{fmt_bytes(avail)} of memory available. Expected fewer samples "
            "(fit on a random subset of the rows), a smaller n_jobs, or "
            "criterion='bcv', whose memory grows linearly with n_samples."
        )


def _stability_task(X, cols, blocks, rank, seeds, params):
    """``len(seeds)`` randomly initialised fits at one rank -> [record]."""
    Xc = np.asarray(_submatrix(X, None, cols))
    col_sq = _solvers.column_sums64(Xc)
    labels, n_iter, times, conv_all, errs = [], 0, [], True, []
    for seed in seeds:
        t0 = time.perf_counter()
        model = _make_model(rank, blocks, params, seed, init="random")
        W, conv = _quiet_fit(model, Xc)
        times.append(time.perf_counter() - t0)
        n_iter += int(model.n_iter_)
        conv_all &= conv
        labels.append(np.argmax(W, axis=1))
        col_w = model._fitted_column_weights()
        norm = float(col_sq @ col_w)  # 0 for an all-zero matrix: nothing to miss
        errs.append(float(model.reconstruction_err_) ** 2 / norm if norm > 0 else 0.0)
    coph = _criteria.cophenetic_correlation(_criteria.consensus_matrix(labels))
    rec = {
        "rank": rank,
        "cophenetic": coph,
        "fit_time": float(np.mean(times)),
        "n_iter": n_iter,
        "converged": conv_all,
        "rel_sq_err": float(np.min(errs)),
    }
    return [rec]  # a list of records, as the other tasks return


# --------------------------------------------------------------------------
# reaching the model inside an estimator
# --------------------------------------------------------------------------
def _is_extractor(obj):
    try:
        from sklearn_peek._extract import LayerActivationExtractor
    except ImportError:  # pragma: no cover - the extractor is part of the package
        return False
    return isinstance(obj, LayerActivationExtractor)


def _is_model(obj):
    """True for what LayerActivationExtractor takes as its model."""
    from sklearn_peek._extract._onnx import is_onnx_model
    from sklearn_peek._extract._torch import is_torch_module

    return is_onnx_model(obj) or is_torch_module(obj)


def _resolve_model(estimator, X):
    """Return ``(model_or_None, fitted_extractor_or_None, X)``.

    Accepted, in this order: a fitted Pipeline whose first step is a
    LayerActivationExtractor (that extractor is used as is); any other
    Pipeline (X goes through all steps but the last, then the last step is
    resolved); a torch ``nn.Module``; an ONNX path, bytes or ``ModelProto``;
    an object with a ``module_`` attribute (skorch nets, LeNetClassifier) or a
    ``model_`` attribute holding one of these.
    """
    from sklearn.pipeline import Pipeline

    if isinstance(estimator, Pipeline):
        first = estimator.steps[0][1]
        if _is_extractor(first):
            rest = [n for n, s in estimator.steps[1:] if s not in (None, "passthrough")]
            if rest:
                warn(
                    f"RankQualityScorer: the Pipeline's steps after its "
                    f"LayerActivationExtractor ({rest}) are not used: the scorer "
                    "sweeps its own factorizations of the extractor's activations, "
                    "so pipelines that differ only in those steps get the same "
                    "score. It scores the network; search over the network (or "
                    "the extractor) to compare scores.",
                    UserWarning,
                    stacklevel=caller_stacklevel(),
                )
            return None, first, X
        if len(estimator.steps) > 1:
            Xt = estimator[:-1].transform(X)
            return _resolve_model(estimator.steps[-1][1], Xt)
        return _resolve_model(first, X)
    if _is_extractor(estimator):
        return None, estimator, X
    if _is_model(estimator):
        return estimator, None, X
    for attr in ("module_", "model_"):
        inner = getattr(estimator, attr, None)
        if inner is not None and _is_model(inner):
            return inner, None, X
    raise TypeError(
        f"estimator={type(estimator).__name__!r}: cannot find a model to probe; "
        "expected a torch nn.Module, an ONNX path/bytes/ModelProto, an object with "
        "a fitted `module_` (skorch nets, LeNetClassifier) or `model_` attribute, or "
        "a Pipeline whose first step is a LayerActivationExtractor (or whose last "
        "step is one of the above)."
    )


# --------------------------------------------------------------------------
# the estimator
# --------------------------------------------------------------------------
class RankQualityScorer(BaseEstimator):
    """Rank each hidden layer supports, by sweeping coupled factorizations.

    For every probed layer ``l`` the scorer factorizes the coupled matrix
    ``[input | layer l]`` (``coupling="input"``) with
    :class:`~sklearn_peek.CoupledNMF` at every rank in ``ranks``, and selects
    the rank the data supports by ``criterion``. Networks trained well give
    higher ranks (Saini & Papalexakis, 2018), which makes the scorer usable as
    a label-free scikit-learn scorer.

    Parameters
    ----------
    layers : str, list of str or None, default=None
        Blocks (layer names) to analyse; None means every block except
        ``"input"``. With ``coupling="all"``, the input block and these
        layers are factored together (the other blocks are left out). When
        the scorer is called on an estimator, these are also
        the layers given to the extractor it builds (None: the extractor's
        ``"auto"``).
    extractor : LayerActivationExtractor or None, default=None
        If given, :meth:`fit` takes raw inputs, runs them through this
        extractor (fitting a clone of it first when it is not fitted) and uses
        its ``block_sizes_``. When the scorer is *called* on an estimator, the
        extractor serves as a template (pooling, nonneg, input_shape, ...)
        whose ``model`` is replaced by the estimator's model (and whose
        ``layers``, ``device`` and ``progress`` by the scorer's, where the
        scorer sets them and, for ``device`` and ``progress``, the template
        leaves them at None).
    blocks : list of (name, size) or of int, or None, default=None
        Block layout of an ndarray ``X``, e.g. ``extractor.block_sizes_``
        (with ``extractor`` given, the extractor's layout is used, and
        ``blocks``, when set, must agree with it). A
        plain size is named ``"block<i>"`` (``i``: its position), as
        :class:`~sklearn_peek.CoupledNMF` names it; since no plain size is
        named ``"input"``, ``coupling="input"`` needs the input block given
        as a pair, ``("input", size)``. A pandas DataFrame carries the layout
        in its column names ``"<block>__<feature>"`` and needs none.
    ranks : iterable of int or None, default=None
        Ranks to try (sorted; distinct, each >= 1 and <= the rows and columns
        of every coupled matrix, see Raises). None means ranks 1 to 30,
        ``range(1, 31)``.
    criterion : {"bcv", "elbow", "energy", "stability"}, default="bcv"
        How the rank is selected:

        - ``"bcv"``: bi-cross-validation (Owen & Perry, 2009). Rows are split
          into ``cv`` shuffled folds. For fold k the model is fitted on the
          other rows (all columns) and scored with
          :meth:`CoupledNMF.score <sklearn_peek.CoupledNMF.score>` on the rows
          of fold k: a random half of every block's columns is held out (one
          split per fold, the same for every rank), the sample factor is
          solved from the held-in half with H fixed, and the score is minus
          the block-weighted relative squared error on the held-out half
          (higher is better, 0 is perfect).
          The selected rank follows ``selection``. Measures: how many
          components carry structure that generalises to new rows *and* new
          columns. Fails when there are few rows per fold, or when the noise
          is so structured (e.g. strongly correlated pixels) that extra
          components still predict held-out columns: it then selects high.
        - ``"elbow"``: knee of the relative reconstruction error of
          full-data fits (largest distance below the chord of the normalised
          curve). Measures: where the error curve bends. Fails on smooth
          curves without a bend (it then returns the largest rank), and
          depends on the range of ``ranks`` swept.
        - ``"energy"``: smallest rank whose explained energy
          ``1 - err^2 / ||X||^2`` (block-weighted) reaches
          ``energy_threshold``. Measures: how compactly the data is
          described. Fails as a quality signal because it counts noise as
          energy: noisier data needs more components; when no rank reaches
          the threshold the largest rank is returned with a warning.
        - ``"stability"``: consensus clustering (Brunet et al., 2004):
          ``n_restarts`` randomly initialised fits per rank, samples grouped
          by the largest entry of their row of W, consensus matrix, cophenetic
          correlation; selects the rank just before the largest drop of the
          cophenetic correlation (the maximum if it never drops; rank 1 is
          skipped). Measures: how reproducibly the factors cluster the samples.
          Fails when the data has no cluster structure (the curve is flat and
          noisy) and costs ``n_restarts`` fits per rank plus
          ``n_samples x n_samples`` matrices (about ``32 * n_samples**2``
          bytes per parallel task: 3.2 GB at 10,000 samples; a
          ``MemoryError`` says so before any fit when that exceeds half of
          the available memory).
    cv : int, default=5
        Number of row folds (and column groups) for ``"bcv"``.
    coupling : {"input", "none", "all"}, default="input"
        ``"input"``: each layer with the input block, ``[input | layer]``.
        ``"none"``: each layer alone (baseline). ``"all"``: every block at once
        (the input and ``layers``, when given), reported as one layer named
        ``"all"``.
    block_weights : "norm", "none" or array-like, default="norm"
        Passed to every :class:`~sklearn_peek.CoupledNMF`; with "norm" each
        block counts as much as the others. An array gives one weight per
        block of a coupled matrix: two (input, layer) under
        ``coupling="input"``, one under ``"none"``, and under ``"all"`` one
        per block factored together (the input and ``layers``, or all).
    solver : {"hals", "mu"}, default="hals"
        Passed to every CoupledNMF.
    init : {"nndsvd", "nndsvda", "nndsvdar", "random"} or None, default=None
        Initialisation of the first rank of each chain (and of every rank
        without warm starts). "stability" always uses "random".
    max_iter : int, default=200
        Per fit. Fits that stop at ``max_iter`` are marked in
        ``cv_results_["converged"]`` and reported by one ConvergenceWarning.
    tol : float, default=1e-4
        Per fit (relative decrease of the objective).
    selection : {"one_se", "max"}, default="one_se"
        Rule of ``"bcv"``: ``"max"`` takes the best mean score; ``"one_se"``
        the smallest rank whose mean score is within one (paired) standard
        error of the best one. ``"one_se"`` is the default because beyond the
        true rank the curve is flat and ``"max"`` wanders up by noise. Under
        both, mean scores within 1e-6 of the best count as ties (the smallest
        tied rank is taken), so rounding cannot pick a rank.
    energy_threshold : float in (0, 1], default=0.9
        Target of ``"energy"``.
    n_restarts : int, default=10
        Random restarts per rank for ``"stability"``.
    warm_start : bool, default=True
        Start each rank from the previous rank's factors plus new components
        taken from the residual (NNDSVD of the residual), within chains of
        consecutive ranks of about equal cost. The chains are cut from
        ``ranks`` alone. Not used by ``"stability"``, whose restarts must be
        independent. On a torch device (HALS) the chains of a (layer, fold)
        run in lockstep, one stacked solver run per step of the chains. With
        False, every rank starts from CoupledNMF's initialisation, and (HALS)
        the ranks of a (layer, fold) run as stacked solver runs
        (:func:`fit_ranks`): in groups of up to 3 ranks on the host, all at
        once on a torch device.
    score_layer : str or None, default=None
        Layer whose selected rank :meth:`__call__` returns; None averages all
        layers. It must be a layer the scorer analyses (one of ``layers``;
        ``"all"`` under ``coupling="all"``): :meth:`fit` checks it before
        any fit, and :meth:`__call__` before the network runs when
        ``layers`` or ``coupling="all"`` tells which layers those are.
    n_jobs : int or None, default=None
        Number of joblib workers; None defers to the active
        ``joblib.parallel_config`` (one worker outside of one).
    device : None, str or torch.device, default=None
        Passed to every CoupledNMF and, when the scorer is called on an
        estimator, to the extractor it builds (or to the ``extractor``
        template's copy, unless the template sets its own). When it selects a torch
        device (``"cuda"``, ``"cuda:N"``, ``"auto"`` with a GPU, a
        ``torch.device``), the fits run in this process one after the other,
        whatever ``n_jobs`` and the joblib backend say: one CUDA context
        instead of one per worker.
    random_state : int, RandomState or None, default=None
        Seeds the row folds, the column groups, and every fit.
    verbose : int, default=0
        Passed to :class:`joblib.Parallel`.
    progress : bool or None, default=None
        A tqdm progress bar over the fit tasks (one per layer, fold and chain
        or group of ranks on the host, one per layer and fold on a torch
        device; see ``n_tasks_``) as they finish. None draws it when
        standard error is a terminal or the code runs in a Jupyter notebook,
        unless the ``CI`` environment variable is set or this is a joblib
        worker process (a search's ``n_jobs``). When the scorer is
        called on an estimator, the extractor gets it too, under the same rule
        as ``device``.

    Attributes
    ----------
    rank_ : dict
        Layer name -> selected rank.
    cv_results_ : dict of ndarray
        One entry per (layer, rank), in GridSearchCV's spirit
        (``pandas.DataFrame(scorer.cv_results_)``). Keys: ``"layer"``,
        ``"rank"``, ``"mean_score"``, ``"std_score"`` (the criterion's curve,
        higher is better: bcv mean/std of the fold scores; elbow: minus the
        relative error; energy: explained energy; stability: cophenetic
        correlation, std 0), ``"mean_fit_time"``, ``"std_fit_time"``,
        ``"n_iter"`` (solver iterations summed over the fits), ``"selected"``
        (bool). bcv adds ``"split{k}_score"``; full-data criteria add
        ``"relative_error"`` and ``"explained_energy"``; elbow adds ``"bend"``;
        stability adds ``"cophenetic"``.
    curves_ : dict
        Layer -> dict with ``"ranks"``, ``"mean"``, ``"std"``, ``"selected"``
        and ``"criterion"``: what a rank-sweep plot needs.
    layers_ : list of str
        Layers analysed, in order.
    block_sizes_ : list of (str, int)
        Block layout of the data fitted.
    n_iter_total_ : int
        Solver iterations over all fits.
    fit_time_total_ : float
        Seconds spent in fits, summed over workers.
    n_tasks_ : int
        Number of joblib tasks the work was cut into.
    ranks_ : ndarray of int
        The ranks swept, sorted (``ranks``, or 1 to 30 for None); the
        ``"rank"`` column of :attr:`cv_results_` takes these values.
    rank_limit_ : int
        The largest rank these data allow for every layer: the smallest, over
        the layers, of :attr:`rank_limits_`.
    rank_limits_ : dict of str to int
        Per layer, the largest rank its matrix allows: the smaller of the
        rows a fit sees and the columns of the layer's matrix. A selected rank
        at the top of ``ranks`` is never a confirmed peak: below this limit a
        longer ``ranks`` can show where the curve turns; at it, the rank is
        only a lower bound.
    extractor_ : LayerActivationExtractor
        The extractor used by fit, when ``extractor`` was given.
    n_features_in_ : int
        Number of columns of ``X`` when it was 2-D (images given to an
        ``extractor`` as 4-D arrays set none).
    feature_names_in_ : ndarray of str
        Column names of ``X`` when it was a DataFrame with string names.

    Raises
    ------
    ValueError
        For bad parameters or data, naming the argument, the value and what is
        allowed, before any work (also before ``extractor`` runs). A value
        outside a parameter's own rules (a type, a range, one of a set of
        strings, with close matches for a misspelt one) raises
        scikit-learn's ``InvalidParameterError``, a ValueError and a
        TypeError; the parameters passed on to CoupledNMF (``block_weights``,
        ``solver``, ``tol``) follow its rules. Then: empty, non-positive or
        repeated ``ranks``; a rank above the rows (training rows for
        ``"bcv"``) or the columns of a coupled matrix (the layer is named);
        ``cv > n_samples``; a layer that does not exist (close matches are
        listed).

    Notes
    -----
    **The scorer's number.** ``scorer(estimator, X)`` extracts the
    activations of ``X`` from the estimator's model, fits a clone of the
    scorer on them, and returns ``rank_[score_layer] / max(ranks)`` (or the
    mean of ``rank_[l] / max(ranks)`` over the layers when ``score_layer`` is
    None): a number in (0, 1], higher meaning the layers support more
    components, i.e. (per the paper) a better trained network. Labels are
    never used.

    **Parallelism.** Tasks are (layer, fold, chain of ranks) for bcv,
    (layer, chain of ranks) for elbow/energy, and (layer, rank) for
    stability, sent to :class:`joblib.Parallel`, so any joblib backend works:
    ``with joblib.parallel_config(backend="dask"): scorer.fit(X)`` runs them
    on a dask.distributed cluster. Large arrays are memory-mapped by loky and
    scattered once by joblib's dask backend.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_peek import RankQualityScorer
    >>> rng = np.random.default_rng(0)
    >>> W = rng.random((150, 4))
    >>> X = W @ rng.random((4, 80))
    >>> X = np.abs(X + 0.3 * X.std() * rng.standard_normal(X.shape))
    >>> scorer = RankQualityScorer(blocks=[("input", 30), ("conv1", 50)],
    ...                            ranks=range(1, 9), cv=3, max_iter=1000,
    ...                            random_state=0)
    >>> scorer.fit(X).rank_
    {'conv1': 4}
    """

    _parameter_constraints: ClassVar[dict] = {
        "layers": [None, str, "array-like"],
        "extractor": [None, HasMethods(["fit", "transform"])],
        "blocks": "no_validation",  # with X: resolve_blocks
        "ranks": "no_validation",  # check_ranks
        "criterion": [StrOptions(set(_CRITERIA))],
        "cv": [Interval(Integral, 2, None, closed="left")],
        "coupling": [StrOptions(set(_COUPLINGS))],
        **{k: CoupledNMF._parameter_constraints[k] for k in _PASSED_ON},
        "init": [StrOptions({"nndsvd", "nndsvda", "nndsvdar", "random"}), None],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "selection": [StrOptions(set(_SELECTIONS))],
        "energy_threshold": [Interval(Real, 0, 1, closed="right")],
        "n_restarts": [Interval(Integral, 2, None, closed="left")],
        "warm_start": ["boolean"],
        "score_layer": [None, str],  # a layer of the data: in fit
        "n_jobs": [
            None,
            Interval(Integral, None, -1, closed="right"),
            Interval(Integral, 1, None, closed="left"),
        ],
        "device": "no_validation",  # resolve_device
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "progress": [None, "boolean"],
    }

    def __init__(
        self,
        layers=None,
        *,
        extractor=None,
        blocks=None,
        ranks=None,
        criterion="bcv",
        cv=5,
        coupling="input",
        block_weights="norm",
        solver="hals",
        init=None,
        max_iter=200,
        tol=1e-4,
        selection="one_se",
        energy_threshold=0.9,
        n_restarts=10,
        warm_start=True,
        score_layer=None,
        n_jobs=None,
        device=None,
        random_state=None,
        verbose=0,
        progress=None,
    ):
        self.layers = layers
        self.extractor = extractor
        self.blocks = blocks
        self.ranks = ranks
        self.criterion = criterion
        self.cv = cv
        self.coupling = coupling
        self.block_weights = block_weights
        self.solver = solver
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.selection = selection
        self.energy_threshold = energy_threshold
        self.n_restarts = n_restarts
        self.warm_start = warm_start
        self.score_layer = score_layer
        self.n_jobs = n_jobs
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.progress = progress

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True  # fit refuses negative data
        return tags

    # ------------------------------------------------------------ validation
    def _validate_params(self):
        """Check the parameters before any work; return the sorted ranks.

        The declared rules (``_parameter_constraints``, where the parameters
        passed on to CoupledNMF take its own), then the ranks and the block
        weights, whose rules involve more than one value.
        """
        validate_params(self)
        if self.layers is not None and not self._given_layers():
            raise ValueError(
                f"layers={self.layers!r} names no layer; expected layer names, or "
                "None for every block but 'input'."
            )
        ranks = self._check_ranks()
        names = {_INPUT: [_INPUT, "<layer>"], "none": ["<layer>"]}
        if self.coupling in names:
            self._check_block_weights(names[self.coupling])
        return ranks

    def _given_layers(self):
        """``layers`` (not None) as a list of names."""
        return [self.layers] if isinstance(self.layers, str) else list(self.layers)

    def _check_ranks(self):
        """``ranks`` (None: ``range(1, 31)``) as a sorted list of distinct ints."""
        given = _DEFAULT_RANKS if self.ranks is None else self.ranks
        return sorted(check_ranks(given))

    def _ranks_txt(self):
        """``ranks=...`` for messages (None is spelt out)."""
        if self.ranks is None:
            return "ranks=None (ranks 1 to 30)"
        return f"ranks={self.ranks!r}"

    def _check_block_weights(self, block_names):
        """Explicit ``block_weights``: one finite weight >= 0 per block."""
        if isinstance(self.block_weights, str):  # "norm" or "none"
            return
        check_weights(
            self.block_weights,
            len(block_names),
            name="block_weights",
            block_names=block_names,
        )

    def _check_data(self, X):
        """Return (array, block_sizes) from X, blocks and extractor."""
        if self.extractor is not None:
            ext = self.extractor
            if not hasattr(ext, "block_sizes_"):
                ext = clone(ext).fit(X)
            self.extractor_ = ext
            Z = ext.transform(X)
            blocks = [(str(n), int(s)) for n, s in ext.block_sizes_]
            if self.blocks is not None and self._blocks_param(Z.shape[1]) != blocks:
                raise ValueError(
                    f"blocks={self.blocks!r} disagrees with the blocks of "
                    f"`extractor`, {blocks!r}; expected blocks=None (the "
                    "extractor gives the layout) or the same blocks."
                )
            return self._as_array(Z, "X (activations from `extractor`)"), blocks

        if hasattr(X, "columns") and hasattr(X, "to_numpy"):
            names, slices = blocks_from_feature_names(
                [str(c) for c in X.columns], "X (a DataFrame)"
            )
            inferred = [(n, sl.stop - sl.start) for n, sl in zip(names, slices)]
            if self.blocks is not None and self._blocks_param(X.shape[1]) != inferred:
                raise ValueError(
                    f"blocks={self.blocks!r} disagrees with the column names of X, "
                    f"which give {inferred!r}."
                )
            check_numeric_columns(X, where="RankQualityScorer.fit")
            return self._as_array(X.to_numpy(), "X"), inferred

        Xa = self._as_array(X, "X")
        if self.blocks is None:
            raise ValueError(
                "blocks=None but X is an ndarray without block names; expected "
                "`blocks=[(name, size), ...]`, a DataFrame with '<block>__<feature>' "
                "columns, or an `extractor`."
            )
        return Xa, self._blocks_param(Xa.shape[1])

    def _blocks_param(self, n_features):
        """``blocks`` as (name, size) pairs, checked as CoupledNMF checks them
        (plain sizes are named "block<i>")."""
        names, slices = resolve_blocks(self.blocks, n_features)
        return [(n, sl.stop - sl.start) for n, sl in zip(names, slices)]

    @staticmethod
    def _as_array(X, name):
        import scipy.sparse as sp
        from sklearn.utils import check_array

        if is_torch_tensor(X):
            # Checked where it is (finite, non-negative, 2-D); it stays there.
            return compute_tensor(
                X, X.device, param=name, where="RankQualityScorer.fit"
            )
        if sp.issparse(X):
            raise ValueError(
                f"{name} is a scipy sparse matrix; expected a dense array "
                "(activations are dense): pass X.toarray()."
            )
        Xa = check_array(
            X,
            dtype=[np.float64, np.float32],
            ensure_all_finite=False,
            accept_sparse=False,
        )
        # chunked: no temporary the size of X (as for a tensor above)
        check_finite_nonneg(Xa, name=name, where="RankQualityScorer.fit")
        return Xa  # (an unaligned X is copied by CoupledNMF, which fits it)

    def _layer_columns(self, blocks):
        """Return list of (layer_name, column index array or None, coupled blocks)."""
        names = [n for n, _ in blocks]
        offsets = np.concatenate([[0], np.cumsum([s for _, s in blocks])])
        span = {n: np.arange(offsets[i], offsets[i + 1]) for i, n in enumerate(names)}
        size = dict(blocks)
        non_input = [n for n in names if n != _INPUT]
        if self.layers is None:
            layers = non_input
        else:
            layers = self._given_layers()
            for name in layers:
                if name not in names or name == _INPUT:
                    raise ValueError(
                        f"layers contains {name!r}, which is not a layer of the data; "
                        f"expected some of {non_input!r}."
                        + did_you_mean(name, non_input)
                    )
        if self.coupling == _ALL:
            if self.layers is None:
                return [(_ALL, None, blocks)]
            # the input (when there is one) and the chosen layers, in data order
            keep = [n for n in names if n == _INPUT or n in layers]
            cols = np.concatenate([span[n] for n in keep])
            if np.array_equal(cols, np.arange(cols[0], cols[-1] + 1)):
                cols = slice(int(cols[0]), int(cols[-1]) + 1)  # a view, not a copy
            return [(_ALL, cols, [(n, size[n]) for n in keep])]
        if not layers:
            raise ValueError(
                f"the data has no block other than 'input' (blocks={blocks!r}); "
                "expected at least one layer block."
            )
        if self.coupling == _INPUT and _INPUT not in names:
            raise ValueError(self._no_input_block_message(blocks))
        out = []
        for name in layers:
            if self.coupling == _INPUT:
                cols = np.concatenate([span[_INPUT], span[name]])
                cb = [(_INPUT, size[_INPUT]), (name, size[name])]
            else:
                cols = span[name]
                cb = [(name, size[name])]
            if cols.size and np.array_equal(cols, np.arange(cols[0], cols[-1] + 1)):
                cols = slice(int(cols[0]), int(cols[-1]) + 1)  # a view, not a copy
            out.append((name, cols, cb))
        return out

    def _no_input_block_message(self, blocks):
        """Why ``coupling="input"`` cannot run on ``blocks`` ((name, size)
        pairs), and the ways out."""
        names = [n for n, _ in blocks]
        msg = f"coupling='input' needs an 'input' block, but the blocks are {names!r}"
        plain = self.blocks is not None and any(is_integral(b) for b in self.blocks)
        if plain:
            # e.g. with the first block as the input, as the extractor puts it
            example = [(_INPUT, blocks[0][1]), *blocks[1:]]
            return (
                f"{msg}: blocks={self.blocks!r} gives plain sizes, named "
                "'block<i>' as CoupledNMF names them, and a size cannot say which "
                "block holds the input. Expected (name, size) pairs naming it, "
                f"e.g. blocks={example!r}, or coupling='none' or 'all'."
            )
        return (
            f"{msg}; expected the extractor's include_input=True, or coupling='none'."
        )

    def _check_layout(self, n, analysed, samples):
        """What the data's shape must allow beyond ``ranks``: explicit
        ``block_weights`` under ``coupling="all"``, a ``score_layer`` among
        the layers ``analysed`` (:meth:`_layer_columns`), and no more bcv
        folds than the ``n`` samples (worded as ``samples``, e.g. "the 40
        samples of X")."""
        if self.coupling == _ALL:
            self._check_block_weights([b for b, _ in analysed[0][2]])
        self._check_score_layer([name for name, _, _ in analysed])
        if self.criterion == "bcv" and self.cv > n:
            raise SweepLimitError(
                "cv",
                n,
                f"cv={self.cv!r} is larger than {samples}; expected 2 <= cv <= {n}.",
            )

    def _check_score_layer(self, analysed):
        """``score_layer`` is one of the ``analysed`` layers (the keys
        :attr:`rank_` will have), or None."""
        if self.score_layer is None or self.score_layer in analysed:
            return
        why = ""
        if self.coupling == _ALL:
            why = " (coupling='all' reports one layer, 'all')"
        elif self.score_layer == _INPUT:
            why = " (the input block is not analysed as a layer of its own)"
        raise ValueError(
            f"score_layer={self.score_layer!r} is not a layer the scorer "
            f"analyses{why}; expected one of {analysed!r}."
            + did_you_mean(self.score_layer, analysed)
        )

    def _check_sweep(self, n, blocks, samples, ranks):
        """What :meth:`fit` checks of the data's shape before any fit:
        :meth:`_check_layout`, and the largest of ``ranks`` (validated,
        sorted) against the rank limit (:class:`SweepLimitError`). Returns
        the rows a fit sees, each layer's columns and :meth:`_layer_columns`.
        Also run by :func:`sklearn_peek.studies.run_case_study` before any
        training."""
        layer_cols = self._layer_columns(blocks)
        self._check_layout(n, layer_cols, samples)
        limit, why, n_rows, columns = self._rank_limit(n, layer_cols)
        if ranks[-1] > limit:
            raise SweepLimitError(
                "ranks",
                limit,
                f"{self._ranks_txt()} goes up to {ranks[-1]}, {why}",
                why,
                n_rows,
                columns,
            )
        return n_rows, columns, layer_cols

    def rank_limits(self, n_samples, block_sizes):
        """The largest rank each layer can be swept to, known before fitting.

        Lets a caller check ``ranks`` against the data's shape without
        extracting or fitting anything: an extractor fitted on a few samples
        gives ``block_sizes``. :meth:`fit` records the same numbers as
        :attr:`rank_limits_` and refuses ``ranks`` above their minimum.

        Parameters
        ----------
        n_samples : int
            Number of samples (rows) the scorer will be fitted on.
        block_sizes : list of (str, int)
            The data's blocks in column order, as
            :attr:`LayerActivationExtractor.block_sizes_` (``"input"`` for
            the raw inputs).

        Returns
        -------
        dict of str to int
            Per analysed layer (as ``layers`` and ``coupling`` choose them;
            ``"all"`` under ``coupling="all"``), the smaller of the rows one
            fit sees (the training rows of a fold under ``criterion="bcv"``)
            and the columns of the layer's coupled matrix.

        Raises
        ------
        SweepLimitError
            With ``param="cv"`` when ``criterion="bcv"`` and ``cv`` exceeds
            ``n_samples``.
        ValueError
            For the other settings :meth:`fit` would refuse with these
            blocks: unknown ``layers`` or ``score_layer``, ``block_weights``
            of the wrong length under ``coupling="all"``, malformed
            ``block_sizes``.

        Examples
        --------
        >>> from sklearn_peek import RankQualityScorer
        >>> RankQualityScorer(cv=3).rank_limits(90, [("input", 64), ("fc1", 20)])
        {'fc1': 60}
        >>> RankQualityScorer(coupling="none").rank_limits(
        ...     90, [("input", 64), ("fc1", 20)])
        {'fc1': 20}
        """
        self._validate_params()
        if not is_integral(n_samples) or n_samples < 1:
            raise ValueError(
                f"n_samples={n_samples!r} is invalid; expected an integer >= 1."
            )
        blocks = _check_block_sizes(block_sizes)
        n = int(n_samples)
        layer_cols = self._layer_columns(blocks)
        self._check_layout(n, layer_cols, f"n_samples={n}")
        _, _, rows, columns = self._rank_limit(n, layer_cols)
        return {name: min(rows, m) for name, m in columns.items()}

    def _rank_limit(self, n_samples, layer_cols):
        """The largest rank every layer's coupled matrix supports, and why.

        Returns ``(limit, reason, rows, columns)``; ``reason`` completes a
        sentence about the requested ranks ("but the coupled matrix of layer
        ... expected ranks <= limit."). A rank is bounded by the rows a fit
        sees (``rows``: the training rows of a fold under ``criterion="bcv"``)
        and the columns of the layer's coupled matrix (``columns``, per
        layer; ``layer_cols`` as :meth:`_layer_columns` gives them).
        """
        n = n_samples
        bcv = self.criterion == "bcv"
        n_rows = n - int(np.ceil(n / self.cv)) if bcv else n
        rows_txt = f"{n_rows} training rows per fold" if bcv else f"{n} rows"
        limit = None
        columns = {}
        for name, _cols, cb in layer_cols:
            m = columns[name] = sum(s for _, s in cb)
            bound = min(n_rows, m)
            if limit is None or bound < limit[0]:
                limit = (
                    bound,
                    f"but the coupled matrix of layer {name!r} has {rows_txt} and "
                    f"{m} columns; expected ranks <= {bound}.",
                )
        return (*limit, n_rows, columns)

    # ------------------------------------------------------------------- fit
    def fit(self, X, y=None):
        """Sweep the ranks of every layer and select one per layer.

        Parameters
        ----------
        X : ndarray, DataFrame, or raw inputs
            The coupled activation matrix (DataFrame with
            ``"<block>__<feature>"`` columns, or ndarray with ``blocks``), or
            the raw inputs of ``extractor`` when one is given.
        y : ignored
            Labels are never used.

        Returns
        -------
        RankQualityScorer
            The fitted scorer.
        """
        ranks = self._validate_params()
        input_features = _input_features(X)  # before the sweep: nothing fails late
        Xa, blocks = self._check_data(X)
        n = Xa.shape[0]
        criterion = self.criterion
        n_rows, columns, layer_cols = self._check_sweep(
            n, blocks, f"the {n} samples of X", ranks
        )
        norm = isinstance(self.block_weights, str) and self.block_weights == "norm"
        sq = _row_block_sq(Xa, [size for _, size in blocks]) if norm else None
        if norm:
            used = {nm for _, _, cb in layer_cols for nm, _ in cb}
            _check_live_blocks(sq, blocks, used, n, Xa)

        rng = check_random_state(self.random_state)
        base = int(rng.randint(np.iinfo(np.int32).max))
        params = {
            "block_weights": self.block_weights,
            "solver": self.solver,
            "init": self.init,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "device": self.device,
        }
        crit_id = _CRITERIA.index(criterion)
        # Where the fits run. device=None follows a CUDA tensor (as in
        # CoupledNMF); a CPU tensor takes the NumPy path, which runs the fits
        # in parallel with n_jobs (torch.device("cpu") asks for the torch code).
        dev = select_compute_device(self.device, Xa)
        if self.device is None and dev is not None and dev.type == "cpu":
            dev = None
        on_device = dev is not None
        params["device"] = dev if on_device else self.device
        # Without warm starts, the ranks of a (layer, fold) run as stacked
        # solver runs: on a torch device all of them in one run, with X moved
        # to the device once; on the host in groups (_rank_groups), so that
        # the workers still get several tasks.
        stackable = self.solver == "hals" and criterion != "stability"
        batched = stackable and not self.warm_start
        # With warm starts on a torch device, the chains of a (layer, fold)
        # run in lockstep: one stacked run per step of the chains.
        lockstep = stackable and self.warm_start and on_device and _LOCKSTEP
        if (batched or lockstep) and on_device:
            widest = max(columns.values())
            _check_device_memory(dev, n, Xa.shape[1], widest, lockstep)
            Xa = compute_tensor(Xa, dev, where="RankQualityScorer.fit")
        elif is_torch_tensor(Xa):
            # The other tasks slice NumPy arrays (each fit then moves its
            # slice to ``device``): one host copy of the data.
            Xa = to_numpy(Xa)
        tasks = []  # (key, cost, delayed call)
        if criterion == "stability":
            for li, (name, cols, cb) in enumerate(layer_cols):
                m = sum(s for _, s in cb)
                lk = _layer_key(name)
                for r in ranks:
                    seeds = [
                        _seed(base, crit_id, lk, r, j) for j in range(self.n_restarts)
                    ]
                    call = delayed(_stability_task)(Xa, cols, cb, r, seeds, params)
                    tasks.append(((li, 0, r), r * n * m * self.n_restarts, call))
            workers = 1 if on_device else min(effective_n_jobs(self.n_jobs), len(tasks))
            _check_consensus_memory(n, workers)
        else:
            if criterion == "bcv":
                folds = _criteria.row_folds(n, self.cv, _seed(base, 1000))
                seed_id = crit_id
            else:
                # one full-data "fold"; elbow and energy share their fits
                folds = [(None, None)]
                seed_id = 1
            chains = _rank_chains(ranks, self.warm_start)
            groups = [ranks] if on_device else _rank_groups(ranks)  # if batched
            for li, (name, cols, cb) in enumerate(layer_cols):
                m = sum(s for _, s in cb)
                lk = _layer_key(name)
                for k, (tr, te) in enumerate(folds):
                    rows = n if tr is None else len(tr)
                    weights = None
                    if norm and tr is not None:
                        weights = _fold_weights(sq, blocks, cb, tr)
                    task_params = params
                    if weights is not None:
                        task_params = {**params, "block_weights": weights}
                    model_seed = (
                        _seed(base, seed_id, lk)
                        if tr is None
                        else _seed(base, seed_id, lk, k)
                    )
                    if batched:
                        for gi, group in enumerate(groups):
                            call = delayed(_batched_task)(
                                Xa, cols, cb, tr, te, group, model_seed, task_params
                            )
                            cost = sum(group) * rows * m
                            tasks.append(((li, k, gi), cost, call))
                        continue
                    seeds = [
                        [_seed(base, seed_id, lk, k, r) for r in chain]
                        for chain in chains
                    ]
                    if lockstep:
                        call = delayed(_lockstep_task)(
                            Xa, cols, cb, tr, te, chains, model_seed, seeds, task_params
                        )
                        tasks.append(((li, k, 0), sum(ranks) * rows * m, call))
                        continue
                    for ci, (chain, svd_seeds) in enumerate(zip(chains, seeds)):
                        call = delayed(_chain_task)(
                            Xa,
                            cols,
                            cb,
                            tr,
                            te,
                            chain,
                            model_seed,
                            svd_seeds,
                            task_params,
                            self.warm_start,
                        )
                        tasks.append(((li, k, ci), sum(chain) * rows * m, call))
        # heaviest first: better load balance, same results
        order = sorted(range(len(tasks)), key=lambda i: -tasks[i][1])
        bar = progress_bar(
            self.progress, total=len(tasks), desc="rank sweep", unit="task"
        )
        # With a bar, results come back one by one, still in task order.
        kw = {
            "verbose": self.verbose,
            "return_as": "list" if bar is None else "generator",
        }
        if on_device:
            # A torch device: every fit in this process, one after the other
            # (one CUDA context; process workers would each start their own).
            parallel = Parallel(n_jobs=1, backend="threading", **kw)
        else:
            parallel = Parallel(n_jobs=self.n_jobs, **kw)
        outputs = collect(parallel(tasks[i][2] for i in order), bar)
        results = {tasks[i][0]: out for i, out in zip(order, outputs)}
        self.n_tasks_ = len(tasks)
        self.rank_limits_ = {name: min(n_rows, m) for name, m in columns.items()}
        self.rank_limit_ = min(self.rank_limits_.values())
        self._collect(results, layer_cols, ranks, blocks)
        for attr in ("n_features_in_", "feature_names_in_"):
            self.__dict__.pop(attr, None)  # nothing kept from an earlier fit
        self.__dict__.update(input_features)
        return self

    def _collect(self, results, layer_cols, ranks, blocks):
        crit = self.criterion
        cols = {
            "layer": [],
            "rank": [],
            "mean_score": [],
            "std_score": [],
            "mean_fit_time": [],
            "std_fit_time": [],
            "n_iter": [],
            "converged": [],
            "selected": [],
        }
        extra = {}
        rank_, curves = {}, {}
        n_iter_total = 0
        fit_time_total = 0.0
        # a stability record stands for n_restarts fits (fit_time: their mean)
        n_fits = self.n_restarts if crit == "stability" else 1
        n_r = len(ranks)
        for li, (name, _, _) in enumerate(layer_cols):
            by_rank = {}  # rank -> fold (0 but for bcv) -> record
            for (l2, k, _ci), recs in results.items():
                if l2 == li:
                    for rec in recs:
                        by_rank.setdefault(rec["rank"], {})[k] = rec

            def grid(key, by_rank=by_rank):
                """Array (rank, fold) of one field of the records."""
                return np.array(
                    [[by_rank[r][k][key] for k in sorted(by_rank[r])] for r in ranks]
                )

            times = grid("fit_time")
            mft, sft = times.mean(axis=1), times.std(axis=1)
            it, cv_ = grid("n_iter").sum(axis=1), grid("converged").all(axis=1)
            fit_time_total += float(times.sum()) * n_fits
            if crit == "bcv":
                scores = grid("score")
                mean, std = scores.mean(axis=1), scores.std(axis=1)
                sel = _criteria.select_bcv(ranks, scores, self.selection)
                for k in range(scores.shape[1]):
                    extra.setdefault(f"split{k}_score", []).extend(scores[:, k])
            elif crit in ("elbow", "energy"):
                sq_err = grid("sq_err")[:, 0]
                sq_norm = by_rank[ranks[0]][0]["sq_norm"]
                rel = np.sqrt(sq_err / sq_norm) if sq_norm > 0 else np.zeros(n_r)
                energy = (
                    _criteria.explained_energy(sq_err, sq_norm)
                    if sq_norm > 0
                    else (np.ones(n_r))
                )
                extra.setdefault("relative_error", []).extend(rel)
                extra.setdefault("explained_energy", []).extend(energy)
                if crit == "elbow":
                    sel, bend = _criteria.knee_point(ranks, rel)
                    extra.setdefault("bend", []).extend(bend)
                    mean = -rel
                else:
                    sel = _criteria.select_energy(
                        ranks, energy, self.energy_threshold, layer=name
                    )
                    mean = energy
                std = np.zeros(n_r)
            else:
                coph = grid("cophenetic")[:, 0]
                rel = np.sqrt(grid("rel_sq_err")[:, 0])
                sel = _criteria.select_stability(ranks, coph)
                extra.setdefault("cophenetic", []).extend(coph)
                extra.setdefault("relative_error", []).extend(rel)
                extra.setdefault("explained_energy", []).extend(1.0 - rel**2)
                mean, std = coph, np.zeros(n_r)
            rank_[name] = int(sel)
            curves[name] = {
                "ranks": np.asarray(ranks),
                "mean": np.asarray(mean, dtype=np.float64),
                "std": np.asarray(std, dtype=np.float64),
                "selected": int(sel),
                "criterion": crit,
            }
            cols["layer"].extend([name] * n_r)
            cols["rank"].extend(ranks)
            cols["mean_score"].extend(mean)
            cols["std_score"].extend(std)
            cols["mean_fit_time"].extend(mft)
            cols["std_fit_time"].extend(sft)
            cols["n_iter"].extend(it)
            cols["converged"].extend(cv_)
            cols["selected"].extend(np.asarray(ranks) == sel)
            n_iter_total += int(np.sum(it))
        out = {
            "layer": np.asarray(cols["layer"], dtype=object),
            "rank": np.asarray(cols["rank"], dtype=np.int64),
        }
        for key in sorted(k for k in extra if k.startswith("split")):
            out[key] = np.asarray(extra[key], dtype=np.float64)
        for key in ("mean_score", "std_score", "mean_fit_time", "std_fit_time"):
            out[key] = np.asarray(cols[key], dtype=np.float64)
        out["n_iter"] = np.asarray(cols["n_iter"], dtype=np.int64)
        out["converged"] = np.asarray(cols["converged"], dtype=bool)
        out["selected"] = np.asarray(cols["selected"], dtype=bool)
        for key in ("relative_error", "explained_energy", "bend", "cophenetic"):
            if key in extra:
                out[key] = np.asarray(extra[key], dtype=np.float64)
        self.rank_ = rank_
        self.cv_results_ = out
        self.curves_ = curves
        self.layers_ = [name for name, _, _ in layer_cols]
        self.block_sizes_ = list(blocks)
        self.ranks_ = np.asarray(ranks)
        self.n_iter_total_ = n_iter_total
        self.fit_time_total_ = fit_time_total
        if not out["converged"].all():
            bad = out["rank"][~out["converged"]]
            warn(
                f"some fits stopped at max_iter={self.max_iter} before reaching "
                f"tol={self.tol} (ranks {sorted(set(bad.tolist()))[:10]}); the curves "
                "may be noisier. Raise max_iter or tol.",
                ConvergenceWarning,
                stacklevel=caller_stacklevel(),
            )

    # ------------------------------------------------------------- scoring
    def score_value(self):
        """The number :meth:`__call__` returns, from a fitted scorer.

        ``rank_[score_layer] / max(ranks)``, or the mean of
        ``rank_[layer] / max(ranks)`` over ``layers_`` when ``score_layer`` is
        None. In (0, 1]; higher is better.

        Returns
        -------
        float
            The normalized selected rank, in (0, 1].
        """
        check_is_fitted(self, "rank_")
        top = float(self.ranks_.max())
        if self.score_layer is not None:
            if self.score_layer not in self.rank_:
                raise ValueError(
                    f"score_layer={self.score_layer!r} was not analysed; expected one "
                    f"of {list(self.rank_)!r}."
                    f"{did_you_mean(self.score_layer, list(self.rank_))}"
                )
            return self.rank_[self.score_layer] / top
        return float(np.mean([self.rank_[n] / top for n in self.layers_]))

    def __call__(self, estimator, X, y=None):
        """Score a trained network without labels (a scikit-learn scorer).

        Parameters
        ----------
        estimator : object
            A torch ``nn.Module``; an ONNX path, bytes or ``ModelProto``; an
            object with a fitted ``module_`` (skorch nets, LeNetClassifier) or
            ``model_``; or a fitted Pipeline whose first step is a
            LayerActivationExtractor (used as is) or whose last step is one
            of the above (``X`` then goes through the preceding steps).
        X : array-like
            Inputs the model takes (e.g. images, shape (n, C, H, W)).
        y : ignored
            Accepted for the scorer signature; never used.

        Returns
        -------
        float
            See :meth:`score_value`; higher is better.
        """
        self._validate_params()  # before the network runs
        if self.coupling == _ALL:
            self._check_score_layer([_ALL])
        elif self.layers is not None:
            self._check_score_layer(self._given_layers())
        model, ext, Xm = _resolve_model(estimator, X)
        if ext is None:
            ext = self._build_extractor(model, estimator)
            ext.fit(Xm)
        Z = ext.transform(Xm)
        blocks = [(str(n), int(s)) for n, s in ext.block_sizes_]
        inner = clone(self).set_params(extractor=None, blocks=blocks)
        inner.fit(Z)
        return inner.score_value()

    def _build_extractor(self, model, estimator):
        from sklearn_peek._extract import LayerActivationExtractor

        layers = "auto" if self.layers is None else self.layers
        if self.extractor is not None:
            ext = clone(self.extractor).set_params(model=model)
            if self.layers is not None:
                ext.set_params(layers=layers)
            # what the template leaves at None follows the scorer
            own = ext.get_params(deep=False)
            ext.set_params(
                **{
                    k: getattr(self, k)
                    for k in ("device", "progress")
                    if own[k] is None and getattr(self, k) is not None
                }
            )
            return ext
        kwargs = {}
        shape = getattr(estimator, "input_shape_", None) or getattr(
            estimator, "input_shape", None
        )
        if shape is not None:
            kwargs["input_shape"] = tuple(shape)
        return LayerActivationExtractor(
            model,
            layers=layers,
            include_input=True,
            device=self.device,
            progress=self.progress,
            **kwargs,
        )
