"""Coupled NMF solvers: private functions on arrays.

The problem solved here, for data ``X`` (n_samples x n_features, dense or
scipy sparse), a non-negative weight per column ``d`` (the weight of the
column's block), and factors ``W`` (n_samples x r), ``H`` (r x n_features)::

    0.5 * sum_j d_j * loss(X[:, j], (W @ H)[:, j])
        + l1_W * sum(W) + 0.5 * l2_W * ||W||^2
        + sum_{j: d_j > 0} (l1_H * sum(H[:, j]) + 0.5 * l2_H * ||H[:, j]||^2)

with ``loss`` the squared error (Frobenius) or the generalized
Kullback-Leibler divergence (then the leading 0.5 is dropped, as in
scikit-learn). Columns with ``d_j == 0`` ("passive" blocks) do not influence
``W``; their ``H`` columns are still fitted to them, without penalty.

The column weights are never applied to ``X`` itself (that would copy it and,
for float32 data, might upcast it): they are folded into the small factor,
``X @ (d * H).T`` instead of ``(X * d) @ H.T``.

One implementation for NumPy and torch: the solver bodies use only
operations that torch tensors also support (``@``, ``.T``, elementwise
arithmetic, ``.sum``, indexing). The few that are spelled differently live in
the tiny helpers at the top of this module (``_relu_``, ``_to_float``,
``_pinv``, ``_qr``, ...) and the two products with ``X`` (``_h_xt`` and
``_w_x``, which also hide scipy sparse). Every helper looks at the type of
its array argument: NumPy arrays take the NumPy branch, torch tensors the
torch branch (on the tensor's device and dtype). So the very same solver
functions run on either, with the same math, the same order of updates and
the same stopping rule; the objective is always accumulated in float64 on the
host as a Python float. torch is imported only when a tensor arrives.

On a CUDA device two hot spots, the HALS sweep and the explicit float32
residual of the stopping test, run as Triton kernels with the same arithmetic
(:mod:`sklearn_peek._gpu_kernels`); everywhere else they run as written here.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from . import _gpu_kernels
from ._backend import _torch as _t

# Same floor as scikit-learn's NMF (used to keep denominators positive).
EPSILON = float(np.finfo(np.float32).eps)

# Rows per chunk for the Kullback-Leibler updates and the explicit residual:
# bounds the temporaries to about 1 MiB whatever the size of X.
_KL_CHUNK_ELEMENTS = 1 << 18
# The same on torch devices: larger, since every chunk costs a few kernel
# launches (64 MiB float32 temporaries; a GPU has the memory for them).
_TORCH_CHUNK_ELEMENTS = 1 << 24

# Accelerated HALS (Gillis & Glineur, 2012): after each expensive product with
# X, repeat the cheap coordinate sweeps on the same factor while they still
# move it by more than _INNER_DELTA times the first sweep's move, at most
# 1 + _INNER_ALPHA * rho times, rho being the cost ratio product / sweep.
_INNER_ALPHA = 0.5
_INNER_DELTA = 0.1
_INNER_MAX = 10


# ---------------------------------------------------------------- tiny helpers


def _np(a):
    """True for NumPy arrays (and scipy sparse): the NumPy branch of a helper."""
    return isinstance(a, np.ndarray) or sp.issparse(a)


def _relu_(a):
    """max(a, 0) in place."""
    if _np(a):
        np.maximum(a, a.dtype.type(0), out=a)
        return a
    return a.clamp_(min=0)


def _floor_(a, value):
    """max(a, value) in place."""
    if _np(a):
        np.maximum(a, value, out=a)
        return a
    return a.clamp_(min=value)


def _diag_list(G):
    """Diagonal of a small square matrix as Python floats."""
    if _np(G):
        return [float(v) for v in np.diagonal(G)]
    return G.diagonal().tolist()


def _zero_diag(G):
    """Copy of G with a zero diagonal."""
    if _np(G):
        Gz = G.copy()
        np.fill_diagonal(Gz, 0)
        return Gz
    return G.clone().fill_diagonal_(0)


def _inv_or_zero(diag, l2, like):
    """1 / (diag + l2) as an array like ``like``, 0 where diag <= 0.

    ``diag`` is the Gram diagonal as Python floats (NumPy) or, for torch,
    the diagonal tensor itself: copying a list to a GPU is a blocking copy
    (a cheap one here, right after the sweep has read the diagonal back, but
    a wait all the same). Both divide in float64 and round once to
    ``like``'s dtype.
    """
    if _np(like):
        vals = [1.0 / (g + l2) if g > 0 else 0.0 for g in diag]
        return np.array(vals, dtype=like.dtype)
    torch = _t()
    g = diag.to(torch.float64)
    inv = torch.where(g > 0, 1.0 / (g + l2), torch.zeros_like(g))
    return inv.to(like.dtype)


def _sub_relu_into(a, b, out):
    """out[...] = max(a - b, 0), using b as scratch."""
    if _np(b):
        np.subtract(a, b, out=b)
        np.maximum(b, b.dtype.type(0), out=out)
    else:
        torch = _t()
        torch.sub(a, b, out=b)
        torch.clamp(b, min=0, out=out)


def _is_zero(x):
    """True when a penalty is zero: a scalar equal to 0.

    A vector penalty (over the columns) counts as a penalty without looking
    at its entries, which on a GPU would cost a host synchronisation at every
    sweep: :func:`_h_penalties`, where vectors come from, returns 0.0 instead
    of an all-zero vector.
    """
    return np.ndim(x) == 0 and bool(x == 0)


def _to_float(x):
    """A 0-d array / tensor as a Python float."""
    return float(x)


def _sum64(a):
    """Sum of all entries, accumulated in float64, as a Python float."""
    if _np(a):
        return float(np.sum(a, dtype=np.float64))
    return float(a.sum(dtype=_t().float64))


def _sum64_lazy(a):
    """Sum of all entries (float64 accumulation) as a 0-d array, not read
    back (NumPy: a 0-d float64 array)."""
    if _np(a):
        return np.asarray(np.sum(a, dtype=np.float64))
    return a.sum(dtype=_t().float64)


def _sums64(*arrays):
    """Sums of several arrays (float64 accumulation) with one device transfer."""
    return _sums64_and(arrays)[0]


def _sums64_and(arrays, values=None):
    """Sums of ``arrays`` (as :func:`_sums64`), and ``values`` (None, or a
    1-D float64 tensor: values read ahead on the torch path; the NumPy
    solvers read nothing ahead) as floats, in one host transfer."""
    first = arrays[0] if arrays else values
    if first is None:
        return [], None
    if _np(first):
        assert values is None, "values are read ahead on the torch path only"
        return [_sum64(a) for a in arrays], None
    torch = _t()
    parts = [a.sum(dtype=torch.float64).reshape(1) for a in arrays]
    out = torch.cat(parts if values is None else [*parts, values]).tolist()
    k = len(arrays)
    return out[:k], None if values is None else out[k:]


def _pinv(a):
    """Pseudo-inverse cutting singular values below 1e-15 of the largest,
    NumPy's default, on both paths (torch's default, max(m, n) eps, keeps
    fewer: a rank-deficient W-solve then started elsewhere and ended at
    another solution)."""
    if _np(a):
        return np.linalg.pinv(a, rcond=1e-15)
    return _t().linalg.pinv(a, rtol=1e-15)


def _qr(a):
    if _np(a):
        return np.linalg.qr(a)[0]
    return _t().linalg.qr(a)[0]


def _svd(a):
    if _np(a):
        return np.linalg.svd(a, full_matrices=False)
    return _t().linalg.svd(a, full_matrices=False)


def _copy(a):
    """A C-contiguous copy."""
    if _np(a):
        return np.array(a, order="C", copy=True)
    return a.clone(memory_format=_t().contiguous_format)


def _contig(a):
    if _np(a):
        return np.ascontiguousarray(a)
    return a.contiguous()


def _eps(a):
    """Machine epsilon of a's dtype, as a Python float."""
    if _np(a):
        return float(np.finfo(a.dtype).eps)
    return float(_t().finfo(a.dtype).eps)


def _tiny(a):
    if _np(a):
        return float(np.finfo(a.dtype).tiny)
    return float(_t().finfo(a.dtype).tiny)


def _cast(a, like):
    """``a`` with the dtype of ``like`` (no copy when it already has it)."""
    if _np(a):
        return a.astype(like.dtype, copy=False)
    return a.to(dtype=like.dtype)


def _to64(a):
    if _np(a):
        return a.astype(np.float64)
    return a.to(dtype=_t().float64)


def _from_host(a, like):
    """A NumPy array moved next to ``like`` (same kind, device and dtype)."""
    if _np(like):
        return np.asarray(a).astype(like.dtype, copy=False)
    return _t().as_tensor(np.asarray(a), device=like.device).to(dtype=like.dtype)


def _host(a):
    """A float64 NumPy copy of a small array or tensor."""
    if _np(a):
        return np.asarray(a, dtype=np.float64)
    return a.detach().to(device="cpu", dtype=_t().float64).numpy()


def _zeros(shape, like, *, float64=False):
    if _np(like):
        return np.zeros(shape, dtype=np.float64 if float64 else like.dtype)
    torch = _t()
    return torch.zeros(
        shape, dtype=torch.float64 if float64 else like.dtype, device=like.device
    )


def _full(shape, value, like):
    if _np(like):
        return np.full(shape, value, dtype=like.dtype)
    return _t().full(shape, value, dtype=like.dtype, device=like.device)


def _true(n, like):
    """A boolean vector of n True values next to ``like``."""
    if _np(like):
        return np.ones(n, dtype=bool)
    return _t().ones(n, dtype=_t().bool, device=like.device)


def _where(cond, a, b):
    if _np(cond):
        return np.where(cond, a, b)
    return _t().where(cond, a, b)


def _clamp_min(a, value):
    """max(a, value) in a new array."""
    if _np(a):
        return np.maximum(a, value)
    return a.clamp(min=value)


def _log(a):
    if _np(a):
        return np.log(a)
    return a.log()


def _empty_like(a):
    if _np(a):
        return np.empty_like(a)
    return _t().empty_like(a)


def _zeros_like(a):
    if _np(a):
        return np.zeros_like(a)
    return _t().zeros_like(a)


def _div_into(a, b):
    """b[...] = a / b."""
    if _np(b):
        np.divide(a, b, out=b)
    else:
        _t().div(a, b, out=b)
    return b


def _h_xt(A, X):
    """``A @ X.T`` (A: r x p) -> r x n, without copying X.

    Written as ``(X @ A.T).T``: with a C-ordered X this is the faster BLAS
    call (about 1.5x in float32 with OpenBLAS).
    """
    if _np(A):
        return np.ascontiguousarray((X @ A.T).T)
    # A transposed view, not a copy: the HALS kernel reads any strides. (The
    # product written as A @ X.T ran 2x slower on an H100 for wide X.)
    return (X @ A.T).T


def _w_x(Wt, X):
    """``Wt @ X`` (Wt: r x n) -> r x p, without copying X."""
    if _np(Wt):
        return np.ascontiguousarray((X.T @ Wt.T).T)
    return (X.T @ Wt.T).T


def column_sums64(X, *, square=True):
    """Per-column sums of squares (or sums), float64 NumPy, chunked over rows."""
    n, p = X.shape
    col = _zeros(p, X, float64=True)
    for s, e in _row_steps(n, p, X):
        c = _to64(X[s:e])
        col += (c * c).sum(axis=0) if square else c.sum(axis=0)
    return _host(col)


def _residual_chunks(X, W, H):
    """``W[s:e] @ H - X[s:e]`` for consecutive row chunks (dense, X's side):
    the explicit residual, one chunk-sized temporary at a time."""
    n, p = X.shape
    for s, e in _row_steps(n, p, X):
        Xc = X[s:e]
        if sp.issparse(Xc):
            Xc = Xc.toarray()
        R = W[s:e] @ H
        R -= Xc
        yield R


def residual_column_sums64(X, W, H):
    """Per-column squared residual ``||x_j - W h_j||^2``, float64 NumPy.

    Computed explicitly, in row chunks (one chunk-sized temporary, squared in
    place and summed in float64), with one read back: the Gram form
    ``||x_j||^2 - 2 lin + quad`` cancels to noise in float32 once the fit is
    good.
    """
    col = _zeros(X.shape[1], X, float64=True)
    for R in _residual_chunks(X, W, H):
        if _np(R):
            col += np.square(R, out=R).sum(axis=0, dtype=np.float64)
        else:
            col += R.square_().sum(dim=0, dtype=_t().float64)
    return _host(col)


def _h_penalties(d, l1_H, l2_H):
    """Per-column H penalties divided by the column weight.

    The H sub-problem of column j is ``d_j * quadratic + penalty``; dividing by
    ``d_j`` gives the unweighted HALS / MU update with penalty / d_j. Passive
    columns (d_j == 0) get no penalty.
    """
    if l1_H == 0 and l2_H == 0:
        return 0.0, 0.0
    active = d > 0
    safe = _where(active, d, _full(d.shape, 1.0, d))
    zero = _zeros(d.shape, d)

    def vector(value):
        if not value:
            return 0.0
        v = _cast(_where(active, value / safe, zero), d)
        # All zero (no active column, or value / d_j underflows): no penalty.
        # Checked here, once per fit, so that the sweeps need not (see _is_zero).
        return v if bool(v.any()) else 0.0

    return vector(l1_H), vector(l2_H)


def _penalty_terms(Wt, H, d, l1_W, l2_W, l1_H, l2_H):
    """The penalty as ``sum(c * sum64(a) for c, a in zip(coefs, arrays))``.

    Returned as ``(coefs, arrays)`` so that the caller sums the arrays with
    its own in one host transfer (:func:`_sums64`).
    """
    coefs, arrays = [], []
    if l1_W:
        coefs.append(l1_W)
        arrays.append(Wt)
    if l2_W:
        coefs.append(0.5 * l2_W)
        arrays.append(Wt * Wt)
    if l1_H or l2_H:
        active = _cast(d > 0, H)
        if l1_H:
            coefs.append(l1_H)
            arrays.append(H @ active)
        if l2_H:
            coefs.append(0.5 * l2_H)
            arrays.append((H * H) @ active)
    return coefs, arrays


def _with_penalty(data_arrays, terms, values=None):
    """Sums of ``data_arrays``, the penalty of ``terms`` and ``values`` (see
    :func:`_sums64_and`; None when not given), one transfer."""
    coefs, arrays = terms
    sums, values = _sums64_and([*data_arrays, *arrays], values)
    k = len(data_arrays)
    return sums[:k], sum(c * v for c, v in zip(coefs, sums[k:])), values


def _too_coarse(data, tol, floor):
    """Whether the Gram form of the data term is too coarse for the stopping
    test (see :func:`_frob_data`; ``floor`` is ``10 eps ||X||^2_d``)."""
    return tol > 0 and data * tol < floor


def _frob_data(X, Wt, H, d, xnorm, lin, quad, tol, res=None):
    """Weighted data term 0.5 * sum_j d_j ||x_j - W h_j||^2, and whether it
    needed the explicit residual.

    Normally from the Gram products (``xnorm - 2 lin + quad``, no extra pass
    over X). That form loses about ``eps * xnorm`` to cancellation, which in
    float32 is too coarse to test a relative decrease of ``tol`` once the fit
    is good; then the residual is computed explicitly, in row chunks.
    ``res``: the residual's parts (:func:`_residual_sums`) already read back
    by the caller, used instead of computing them again.
    """
    data = 0.5 * (xnorm - 2.0 * lin + quad)
    if not _too_coarse(data, tol, 10.0 * _eps(H) * xnorm):
        return max(data, 0.0), False
    if res is None:
        return _frob_data_exact(X, Wt, H, d), True
    return 0.5 * sum(res), True


def _residual_sums(X, Wt, H, d):
    """``sum_j d_j ||x_j - W h_j||^2`` in parts, without reading anything back.

    A 1-D float64 array on X's side (NumPy or X's device) whose entries,
    added in order, give the weighted squared residual: one entry from the
    GPU kernel, else one per chunk of rows.
    """
    if not _np(X) and _gpu_kernels.residual_usable(X, Wt, H, d):
        try:
            return _gpu_kernels.weighted_residual(X, Wt, H, d).reshape(1)
        except Exception as exc:  # compile / launch failure: eager from now on
            _gpu_kernels.disable(exc)
    rows = [(R * R) @ d for R in _residual_chunks(X, Wt.T, H)]
    if _np(X):
        return np.array([np.sum(r, dtype=np.float64) for r in rows])
    torch = _t()
    if not rows:
        return torch.zeros(0, dtype=torch.float64, device=X.device)
    return torch.stack([r.sum(dtype=torch.float64) for r in rows])


def _frob_data_exact(X, Wt, H, d):
    """0.5 * the weighted squared residual, computed explicitly (one read)."""
    return 0.5 * sum(_residual_sums(X, Wt, H, d).tolist())


# ----------------------------------------------------------------- HALS sweep
def _hals_sweep(A, num, G, l1, l2, track=True, stack=None, bounds=None):
    """One pass of exact coordinate updates over the rows of ``A`` (in place).

    Minimizes ``0.5 * tr(A.T G A) - tr(num.T A) + l1 * sum(A) + 0.5 * l2 *
    ||A||^2`` over ``A >= 0`` one row (component) at a time; ``l1`` and ``l2``
    may be scalars or vectors over the columns of ``A``. ``stack`` (from
    :func:`fit_hals_batched`, no penalties): A holds several problems and G
    is block diagonal; the GPU kernel then reads only the diagonal blocks.
    ``bounds`` (the same stacks, as ``(start, stop)`` rows per problem): the
    eager sweep reads only the diagonal blocks too.

    Returns the squared Frobenius norm of the change of ``A`` (0.0 when
    ``track`` is False).
    """
    old = _copy(A) if track else None
    height = None if stack is None else stack[2]
    if not _np(A) and _gpu_kernels.usable(A, num, G, height=height):
        # GPU: the same updates in one kernel launch (see _gpu_kernels).
        try:
            if stack is not None:
                _gpu_kernels.sweep_stacked(A, num, G, stack)
            else:
                _gpu_kernels.sweep(A, num, G, l1, l2)
        except Exception as exc:  # compile / launch failure: eager from now on
            _gpu_kernels.disable(exc)
            _hals_sweep_eager(A, num, G, l1, l2, bounds)
    else:
        _hals_sweep_eager(A, num, G, l1, l2, bounds)
    if not track:
        return 0.0
    diff = (A - old).ravel()
    return _to_float(diff @ diff)


def _hals_sweep_eager(A, num, G, l1, l2, bounds=None):
    """The sweep with one group of array operations per row (A in place).

    ``bounds``: G is block diagonal with these ``(start, stop)`` row blocks
    (stacked problems, no penalties); row t then reads only its own block,
    so a sweep costs sum(r_k^2) instead of R^2 row operations.
    """
    diag = _diag_list(G)
    has_l1 = not _is_zero(l1)
    has_pen = has_l1 or not _is_zero(l2)
    if np.ndim(l2) == 0:
        # Row t of the update is relu((num[t] - l1 - sum_{s != t} G[t, s] A[s])
        # / (G[t, t] + l2)). Scaling num and the off-diagonal of G once per
        # sweep leaves three array operations per row: this loop is pure
        # Python overhead on small problems.
        inv = _inv_or_zero(diag if _np(G) else G.diagonal(), float(l2), G)
        Gs = _zero_diag(G) * inv[:, None]
        num_s = (num - l1) * inv[:, None] if has_l1 else num * inv[:, None]
        rows = bounds or [(0, A.shape[0])]
        for lo, hi in rows:
            for t in range(lo, hi):
                if diag[t] <= 0.0:
                    # G[t, t] == 0 forces G[t, :] == 0 and num[t] == 0 (G is a
                    # Gram matrix): row t does not enter the data term. Keep it
                    # (as scikit-learn's "cd" does) so that the component can
                    # revive when the other factor changes; never divide by
                    # zero. With a penalty the optimum of the row is 0.
                    if has_pen:
                        A[t] = A[t] * 0
                    continue
                tmp = Gs[t, lo:hi] @ A[lo:hi]
                _sub_relu_into(num_s[t], tmp, A[t])
    else:  # per-column l2 (H penalties with block weights)
        Gz = _zero_diag(G)
        for t in range(A.shape[0]):
            g = diag[t]
            if g <= 0.0:
                if has_pen:
                    A[t] = A[t] * 0
                continue
            new = num[t] - Gz[t] @ A
            if has_l1:
                new -= l1
            new /= g + l2
            A[t] = _relu_(new)


def _hals_inner(A, num, G, l1, l2, max_sweeps):
    """Accelerated HALS inner loop: repeat sweeps while they still help."""
    if max_sweeps <= 1:
        _hals_sweep(A, num, G, l1, l2, track=False)
        return A
    first = _hals_sweep(A, num, G, l1, l2)
    for _ in range(max_sweeps - 1):
        if _hals_sweep(A, num, G, l1, l2) <= _INNER_DELTA**2 * first:
            break
    return A


def _inner_sweeps(m, n_other, r):
    """1 + alpha * rho, rho = cost(product with X) / cost(one sweep).

    A sweep over the r rows of an (r x m) factor costs about ``r * (2 m r +
    c0)`` flops, ``c0`` standing for the fixed cost of the ~10 array
    operations per row (the Python overhead that dominates small problems);
    the product costs ``2 m n_other r``.
    """
    c0 = 1.0e5
    rho = (2.0 * m * n_other) / (2.0 * m * r + c0)
    return int(max(1, min(_INNER_MAX, 1 + _INNER_ALPHA * rho)))


def _stalled(prev, obj, tol, floor):
    """The stopping test of the solvers.

    The objective went from ``prev`` to ``obj``: stop when its relative
    decrease is below ``tol``, or when it has reached ``floor``, the rounding
    level of the data (an exact fit converges geometrically to 0, so its
    relative decrease never drops below ``tol``). ``tol == 0`` never stops.
    """
    return tol > 0 and (
        prev - obj <= tol * max(prev, np.finfo(np.float64).tiny) or obj <= floor
    )


# -------------------------------------------------------------- Frobenius fit
def fit_hals(
    X,
    W,
    H,
    d,
    *,
    xnorm,
    l1_W=0.0,
    l2_W=0.0,
    l1_H=0.0,
    l2_H=0.0,
    max_iter=200,
    tol=1e-4,
    inner=False,
    verbose=0,
):
    """Weighted Frobenius coupled NMF by HALS (optionally accelerated).

    Parameters
    ----------
    X : ndarray or scipy sparse matrix of shape (n, p)
    W : ndarray of shape (n, r)
        Initial sample factor (not modified).
    H : ndarray of shape (r, p)
        Initial components (not modified).
    d : ndarray of shape (p,)
        Weight of every column (dtype of X).
    xnorm : float
        ``sum_j d_j ||X[:, j]||^2``, computed once by the caller.
    l1_W, l2_W, l1_H, l2_H : float
        Penalties (already scaled as scikit-learn's NMF scales them).
    max_iter : int
        Maximum number of outer iterations (one W and one H update each).
    tol : float
        Stop when the relative decrease of the objective over one iteration
        is below ``tol``.
    inner : bool
        Use the accelerated inner loop (several cheap sweeps per product).
        Off by default: with one sweep per product the iterates are exactly
        those of scikit-learn's "cd" solver. The accelerated variant often
        lowers the objective faster, but in the benchmark it also settled
        0.03-1% above the point plain HALS reaches, so it is opt-in.
    verbose : int

    Returns
    -------
    W : ndarray of shape (n, r)
    H : ndarray of shape (r, p)
    n_iter : int
    info : dict
        ``objective`` (list of floats, the objective at the start and after
        every iteration) and ``converged`` (bool).
    """
    n, p = X.shape
    r = H.shape[0]
    Wt = _copy(W.T)
    H = _copy(H)
    l1v, l2v = _h_penalties(d, l1_H, l2_H)
    sw_W = _inner_sweeps(n, p, r) if inner else 1
    sw_H = _inner_sweeps(p, n, r) if inner else 1

    floor = 10.0 * _eps(H) * xnorm  # see _stalled and _frob_data
    exact = False  # whether the last objective needed the explicit residual

    def objective(lin_terms, quad_terms):
        # One host transfer for all the sums (each is a synchronisation on a
        # GPU). Once the objective has needed the explicit residual (see
        # _frob_data), the next one most likely does too: on the torch path
        # it is computed before anything is read, and read in the same
        # transfer (the same value as computing it after the test).
        nonlocal exact
        terms = _penalty_terms(Wt, H, d, l1_W, l2_W, l1_H, l2_H)
        ahead = _residual_sums(X, Wt, H, d) if exact and not _np(X) else None
        (lin, quad), pen, res = _with_penalty((lin_terms, quad_terms), terms, ahead)
        data, exact = _frob_data(X, Wt, H, d, xnorm, lin, quad, tol, res)
        return data + pen

    Hd = H * d
    HDHt = Hd @ H.T
    num_W = _h_xt(Hd, X)
    WtW = Wt @ Wt.T
    obj = objective(Wt * num_W, WtW * HDHt)
    history = [obj]
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        if n_iter > 1:  # Hd and HDHt are those of the current H (end of loop)
            num_W = _h_xt(Hd, X)
        _hals_inner(Wt, num_W, HDHt, l1_W, l2_W, sw_W)
        WtW = Wt @ Wt.T
        num_H = _w_x(Wt, X)
        _hals_inner(H, num_H, WtW, l1v, l2v, sw_H)
        Hd = H * d
        HDHt = Hd @ H.T
        obj = objective(num_H * Hd, WtW * HDHt)
        history.append(obj)
        if verbose and n_iter % 10 == 0:
            print(f"CoupledNMF[hals] iteration {n_iter}: objective {obj:.6g}")
        if _stalled(history[-2], obj, tol, floor):
            converged = True
            break
    if verbose:
        _say_done("CoupledNMF[hals]", n_iter, history[-1], converged)
    return (
        _contig(Wt.T),
        H,
        n_iter,
        {
            "objective": history,
            "converged": converged,
        },
    )


def _take(a, idx, axis=0):
    """Rows ``idx`` (a list of ints; ``axis=1``: columns) of an array, as a copy."""
    if _np(a):
        index = np.asarray(idx, dtype=np.intp)
    else:
        index = _t().as_tensor(idx, device=a.device)
    return a[index] if axis == 0 else a[:, index]


def _segment_sums64(parts, S, values=None):
    """``S @ row_sums(p)`` for every p in parts, float64, one host transfer.

    ``S`` (K x R, float64) sums the rows of each problem of a batch.
    ``values``: None, or a 1-D float64 tensor on S's device (torch only: the
    NumPy solvers read nothing ahead), read back in the same transfer.
    Returns the list of sums and the values as a list of floats (None when
    not given).
    """
    if _np(S):
        assert values is None, "values are read ahead on the torch path only"
        return [S @ p.sum(axis=1, dtype=np.float64) for p in parts], None
    torch = _t()
    rows = torch.stack([S @ p.sum(dim=1, dtype=torch.float64) for p in parts])
    if values is None:
        return list(rows.cpu().numpy()), None
    flat = torch.cat([rows.reshape(-1), values.to(torch.float64)]).cpu().numpy()
    k = rows.numel()
    return list(flat[:k].reshape(tuple(rows.shape))), flat[k:].tolist()


def _bounds(sizes):
    """``(start, stop)`` of each of consecutive ranges of these sizes."""
    stops = np.cumsum(sizes, dtype=np.intp)
    return [(int(b - r), int(b)) for r, b in zip(sizes, stops)]


def _stack_layout(sizes, like):
    """How problems of these ranks sit in one stack of factors (``like``'s array type).

    Returns ``(bounds, mask, S, stack)``: the ``(start, stop)`` rows of each
    problem; the R x R block-diagonal 0/1 mask (on a GPU only, where the Gram
    matrix is one masked product; None elsewhere); the K x R 0/1 matrix whose
    product sums a stacked array per problem (dtype of ``like``); and the GPU
    kernels' layout (None for NumPy).
    """
    bounds = _bounds(sizes)
    S = np.zeros((len(sizes), sum(sizes)))
    for k, (lo, hi) in enumerate(bounds):
        S[k, lo:hi] = 1.0
    mask = None
    if getattr(like, "is_cuda", False):
        mask = _from_host(S.T @ S, like)  # 1 where two rows share a problem
    stack = None if _np(like) else _gpu_kernels.stack_layout(list(sizes), like)
    return bounds, mask, _from_host(S, like), stack


def _block_gram(A, B, bounds, mask):
    """``(A @ B.T) * mask`` for stacked factors: block diagonal over ``bounds``.

    One product on a GPU; elsewhere the diagonal blocks only (the masked-out
    blocks would be most of the work there).
    """
    if getattr(A, "is_cuda", False):
        return (A @ B.T) * mask
    G = _zeros((A.shape[0], A.shape[0]), A)
    for lo, hi in bounds:
        G[lo:hi, lo:hi] = A[lo:hi] @ B[lo:hi].T
    return G


def _say_done(tag, n_iter, obj, converged):
    """The last line of a verbose fit: why it stopped, and where."""
    why = "converged" if converged else "stopped at max_iter"
    print(f"{tag} {why} after {n_iter} iterations: objective {obj:.6g}")


def fit_hals_batched(X, Ws, Hs, d, *, xnorm, max_iter=200, tol=1e-4, verbose=0):
    """:func:`fit_hals` for several problems on the same X and d at once.

    Problem k has its own start ``Ws[k]`` (n x r_k), ``Hs[k]`` (r_k x p). The
    factors are stacked (``R = sum r_k`` rows) so that every product with X
    serves all problems in one call, and the Gram matrices are masked to
    their diagonal blocks: a HALS sweep over the R stacked rows then updates
    each problem as :func:`fit_hals` would (row t only sees the rows of its
    own problem). The objective and the stopping rule are evaluated per
    problem; a problem that stops leaves the batch. No penalties, plain HALS
    (no inner sweeps). The arithmetic is the same, but the stacked products
    and sums round differently: in float64 the results agree with
    :func:`fit_hals` to about 1e-12 with the same iteration counts; in
    float32 a run whose objective creeps down near ``tol`` may stop a few
    iterations earlier or later. ``verbose`` prints what :func:`fit_hals`
    prints, for each problem, its rank in the tag (``CoupledNMF[hals, rank
    3]``).

    Returns a list of ``(W, H, n_iter, info)``, one per problem, as
    :func:`fit_hals` returns them.
    """
    sizes = [int(H.shape[0]) for H in Hs]
    K = len(sizes)
    Wt = _contig(_concat([W.T for W in Ws]))
    H = _contig(_concat(list(Hs)))
    results = [None] * K
    active = list(range(K))
    floor = 10.0 * _eps(H) * xnorm

    def layout(active):
        """The stack of the active problems (see _stack_layout); S in float64."""
        bounds, mask, S, stack = _stack_layout([sizes[k] for k in active], H)
        return bounds, mask, _to64(S), stack

    def gram(A, B):
        return _block_gram(A, B, bounds, mask)

    was_exact = set()  # problems whose last objective needed the residual

    def residuals(which):
        """The residuals of problems ``which`` (positions in ``active``), not
        read back: ``(values, spans)``, the residual of problem i being the
        sum of ``values[a:b]`` for ``(a, b) = spans[i]``. The GPU kernel
        computes every active problem in one pass over X; otherwise each
        problem of ``which`` is computed in chunks of rows."""
        if stack is not None and _gpu_kernels.residual_usable(
            X, Wt, H, d, stacked=True
        ):
            try:
                values = _gpu_kernels.weighted_residuals_stacked(X, Wt, H, d, stack)
                return values, {i: (i, i + 1) for i in range(len(active))}
            except Exception as exc:  # compile / launch failure: eager
                _gpu_kernels.disable(exc)
        parts = [_residual_sums(X, Wt[lo:hi], H[lo:hi], d) for lo, hi in
                 (bounds[i] for i in which)]  # fmt: skip
        spans = _bounds([int(part.shape[0]) for part in parts])
        return _concat(parts), dict(zip(which, spans))

    def objectives(parts):
        """Objective of every active problem (as fit_hals computes it) from
        the products in ``parts``. As in fit_hals, the residuals are computed
        before the read (torch path) when a problem needed them last time,
        and read in the same transfer."""
        ahead, spans = None, {}
        before = [i for i, k in enumerate(active) if k in was_exact]
        if before and not _np(X):
            ahead, spans = residuals(before)
        (lin, quad), values = _segment_sums64(parts, S, ahead)
        data = [0.5 * (xnorm - 2.0 * lin[i] + quad[i]) for i in range(len(active))]
        exact = [_too_coarse(v, tol, floor) for v in data]  # as _frob_data
        was_exact.clear()
        was_exact.update(k for k, e in zip(active, exact) if e)

        def use(values, spans):
            for i, (a, b) in spans.items():
                if exact[i]:
                    data[i] = 0.5 * sum(values[a:b])
                    exact[i] = False

        use(values, spans)
        late = [i for i, e in enumerate(exact) if e]
        if late:  # needed now and not computed ahead: one more read
            ahead, spans = residuals(late)
            use(ahead.tolist(), spans)
        return [max(v, 0.0) for v in data]

    bounds, mask, S, stack = layout(active)
    Hd = H * d
    HDHt = gram(Hd, H)
    num_W = _h_xt(Hd, X)
    WtW = gram(Wt, Wt)
    history = [[obj] for obj in objectives([Wt * num_W, WtW * HDHt])]
    for n_iter in range(1, max_iter + 1):
        if n_iter > 1:
            num_W = _h_xt(Hd, X)
        _hals_sweep(Wt, num_W, HDHt, 0.0, 0.0, False, stack, bounds)
        WtW = gram(Wt, Wt)
        num_H = _w_x(Wt, X)
        _hals_sweep(H, num_H, WtW, 0.0, 0.0, False, stack, bounds)
        Hd = H * d
        HDHt = gram(Hd, H)
        objs = objectives([num_H * Hd, WtW * HDHt])
        done = []
        for i, (k, (lo, hi)) in enumerate(zip(active, bounds)):
            obj = objs[i]
            prev = history[k][-1]
            history[k].append(obj)
            stop = _stalled(prev, obj, tol, floor)
            if verbose:
                tag = f"CoupledNMF[hals, rank {sizes[k]}]"
                if n_iter % 10 == 0:
                    print(f"{tag} iteration {n_iter}: objective {obj:.6g}")
                if stop or n_iter == max_iter:
                    _say_done(tag, n_iter, obj, stop)
            if stop or n_iter == max_iter:
                results[k] = (
                    _contig(Wt[lo:hi].T),
                    _copy(H[lo:hi]),
                    n_iter,
                    {"objective": history[k], "converged": bool(stop)},
                )
                done.append(i)
        if done:
            keep = [i for i in range(len(active)) if i not in done]
            if not keep:
                break
            idx = _block_index(bounds, keep)
            Wt, H = _take(Wt, idx), _take(H, idx)
            active = [active[i] for i in keep]
            bounds, mask, S, stack = layout(active)
            Hd = H * d
            HDHt = gram(Hd, H)
    return results


def _concat(arrays, axis=0):
    """The arrays one below the other (``axis=1``: side by side), as a new array."""
    if _np(arrays[0]):
        return np.concatenate(arrays, axis=axis)
    return _t().cat(list(arrays), dim=axis)


def _hcat(arrays):
    """The arrays side by side; one array is returned as it is (no copy)."""
    return arrays[0] if len(arrays) == 1 else _concat(arrays, axis=1)


def fit_mu(
    X,
    W,
    H,
    d,
    *,
    xnorm,
    beta_loss="frobenius",
    l1_W=0.0,
    l2_W=0.0,
    l1_H=0.0,
    l2_H=0.0,
    max_iter=200,
    tol=1e-4,
    update_H=True,
    check_every=10,
    verbose=0,
):
    """Weighted coupled NMF by multiplicative updates (Frobenius or KL).

    Same parameters and returns as :func:`fit_hals`, plus ``beta_loss``
    ("frobenius" or "kullback-leibler") and ``check_every``: the objective is
    evaluated every ``check_every`` iterations and the run stops when its
    relative decrease since the previous evaluation is below ``tol``. For KL,
    ``xnorm`` is ``sum_j d_j * sum_i (x_ij log x_ij - x_ij)`` (the part of the
    divergence that does not depend on W and H). For KL the columns of ``d``
    are the block weights themselves (a divergence of order 1 scales linearly).
    """
    kl = beta_loss == "kullback-leibler"
    assert kl or update_H, "update_H=False is for KL only (solve_w_kl)"
    if kl and sp.issparse(X):
        raise ValueError("beta_loss='kullback-leibler' needs a dense X.")
    W = _copy(W)
    H = _copy(H)
    l1v, l2v = _h_penalties(d, l1_H, l2_H)
    # Asked once: on a GPU each question is a synchronisation.
    has_l1v, has_l2v = not _is_zero(l1v), not _is_zero(l2v)

    def terms():
        return _penalty_terms(W.T, H, d, l1_W, l2_W, l1_H, l2_H)

    def pen():
        return _with_penalty((), terms())[1]

    def frob_obj(num_H, WtW):
        Hd = H * d
        (lin, quad), penalty, _ = _with_penalty(
            ((num_H * H) @ d, WtW * (Hd @ H.T)), terms()
        )
        return _frob_data(X, W.T, H, d, xnorm, lin, quad, tol)[0] + penalty

    if kl:
        obj = _kl_objective(X, W, H, d, xnorm) + pen()
    else:
        obj = frob_obj(_w_x(W.T, X), W.T @ W)
    history = [obj]
    last_checked = obj
    floor = 0.0 if kl else 10.0 * _eps(H) * xnorm
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        # ---- W update
        Hd = H * d
        if kl:
            num = _kl_ratio_products(X, W, H, Hd, want="W")
            den = (H @ d)[None, :] + W * 0
        else:
            num = _h_xt(Hd, X).T
            den = W @ (Hd @ H.T)
        if l1_W:
            den += l1_W
        if l2_W:
            den += l2_W * W
        _floor_(den, EPSILON)
        W *= num / den
        # ---- H update
        if update_H:
            if kl:
                num = _kl_ratio_products(X, W, H, Hd, want="H")
                den = W.sum(axis=0)[:, None] + H * 0
            else:
                WtW = W.T @ W
                num = _w_x(W.T, X)
                den = WtW @ H
            if has_l1v:
                den += l1v
            if has_l2v:
                den += l2v * H
            _floor_(den, EPSILON)
            H *= num / den
        if n_iter % check_every == 0 or n_iter == max_iter:
            if kl:
                obj = _kl_objective(X, W, H, d, xnorm) + pen()
            else:  # num and WtW of the H update are those of this W
                # (update_H=False only comes with KL: solve_w_kl)
                obj = frob_obj(num, WtW)
            history.append(obj)
            if verbose:
                print(f"CoupledNMF[mu] iteration {n_iter}: objective {obj:.6g}")
            if _stalled(last_checked, obj, tol, floor):
                converged = True
                break
            last_checked = obj
    if verbose:
        _say_done("CoupledNMF[mu]", n_iter, history[-1], converged)
    return W, H, n_iter, {"objective": history, "converged": converged}


# ----------------------------------------------------------- KL helpers (MU)
def _row_steps(n, p, like=None):
    """Row ranges of about _KL_CHUNK_ELEMENTS entries (torch: _TORCH_CHUNK_ELEMENTS)."""
    size = _KL_CHUNK_ELEMENTS if like is None or _np(like) else _TORCH_CHUNK_ELEMENTS
    step = max(1, size // max(1, p))
    return [(s, min(n, s + step)) for s in range(0, n, step)]


def _kl_ratio_products(X, W, H, Hd, *, want):
    """Numerators of the KL multiplicative updates, in row chunks.

    want="W": ``(X / WH) @ (d * H).T`` (n x r); want="H": ``W.T @ (X / WH)``
    (r x p), with WH floored at EPSILON as scikit-learn does.
    """
    n, p = X.shape
    if want == "W":
        out = _empty_like(W)
    else:
        out = _zeros_like(H)
    for s, e in _row_steps(n, p, X):
        R = W[s:e] @ H
        _floor_(R, EPSILON)
        _div_into(X[s:e], R)
        if want == "W":
            out[s:e] = R @ Hd.T
        else:
            out += W[s:e].T @ R
    return out


def kl_xconst(X, d):
    """``sum_j d_j sum_i (x log x - x)`` (0 log 0 = 0), float64, chunked."""
    n, p = X.shape
    col = _zeros(p, X, float64=True)
    for s, e in _row_steps(n, p, X):
        c = _to64(X[s:e])
        lg = _log(_where(c > 0, c, _full(c.shape, 1.0, c)))
        col += (c * lg - c).sum(axis=0)
    return float(col @ _to64(d))


def kl_column_divergence(X, W, H):
    """Generalized KL divergence of every column, ``sum_i d(x_ij | (WH)_ij)``."""
    n, p = X.shape
    col = _zeros(p, X, float64=True)
    for s, e in _row_steps(n, p, X):
        c = _to64(X[s:e])
        y = _floor_(_to64(W[s:e] @ H), EPSILON)
        pos = c > 0
        one = _full(c.shape, 1.0, c)
        term = _where(pos, c * _log(_where(pos, c, one) / y), _zeros_like(c))
        col += (term - c + y).sum(axis=0)
    return _host(col)


def _kl_objective(X, W, H, d, xconst):
    """Weighted generalized KL divergence, using the precomputed constant."""
    n, p = X.shape
    rows = []
    for s, e in _row_steps(n, p, X):
        y = W[s:e] @ H
        _floor_(y, EPSILON)
        c = X[s:e]
        # sum d_j (-x log y + y)
        rows.append((_log(y) * (-c) + y) @ d)
    total = xconst
    for v in _sums64(*rows):  # one host transfer for all the chunks
        total += v
    return max(total, 0.0)


# ---------------------------------------------------- W with H fixed (NNLS)
def solve_w(X, H, d, *, l1_W=0.0, l2_W=0.0, max_iter=200, tol=1e-4):
    """Non-negative least squares for W with H fixed (weighted Frobenius).

    Every row of W is independent: each row stops on its own when a sweep
    moves it by less than ``tol`` times its norm, so the result for a row does
    not depend on the other rows passed with it.

    Returns W (n x r) and the number of sweeps run.
    """
    n = X.shape[0]
    r = H.shape[0]
    Hd = H * d
    G = Hd @ H.T
    num = _h_xt(Hd, X)  # r x n
    if n == 0:
        return _zeros((0, r), H), 0
    # Start from the projected unconstrained least-squares solution.
    Wt = _relu_(_cast(_pinv(_to64(G)) @ _to64(num), H))
    active = _true(n, Wt)
    sweeps = 0
    for sweeps in range(1, max_iter + 1):  # noqa: B007
        old = _copy(Wt)
        _hals_sweep(Wt, num, G, l1_W, l2_W, track=False)
        diff = ((Wt - old) ** 2).sum(axis=0)
        size = (Wt * Wt).sum(axis=0)
        # Frozen rows keep their previous value: their result is final.
        Wt = _where(active[None, :], Wt, old)
        active &= diff > (tol * tol) * _clamp_min(size, _tiny(Wt))
        if not active.any():
            break
    return _contig(Wt.T), sweeps


def solve_w_batched(X, Hs, d, *, max_iter=200, tol=1e-4):
    """:func:`solve_w` (no penalties) for several H on the same X at once.

    The H are stacked (``R = sum r_k`` rows), so the product with X serves
    all problems in one call, and the Gram matrix is block diagonal, so a
    HALS sweep over the stack updates each problem as :func:`solve_w` would.
    Each (problem, row) pair stops on its own rule, as rows do in
    :func:`solve_w`. Results agree with one :func:`solve_w` per H to float
    rounding (the stopping sums are taken per problem by a product).

    Returns a list of ``(W, sweeps)``, one per H, as :func:`solve_w` returns.
    """
    sizes = [int(H.shape[0]) for H in Hs]
    K, n = len(sizes), X.shape[0]
    H = _contig(_concat(list(Hs)))
    if n == 0:
        return [(_zeros((0, r), H), 0) for r in sizes]
    bounds, mask, S, stack = _stack_layout(sizes, H)
    Hd = H * d
    G = _block_gram(Hd, H, bounds, mask)
    num = _h_xt(Hd, X)  # R x n
    # Start from each problem's projected unconstrained solution.
    Wt = _concat(
        [
            _relu_(_cast(_pinv(_to64(G[lo:hi, lo:hi])) @ _to64(num[lo:hi]), H))
            for lo, hi in bounds
        ]
    )
    of_row = np.repeat(np.arange(K), sizes)  # the problem of each stacked row
    if not _np(H):
        of_row = _t().as_tensor(of_row, device=H.device)
    active = _true(K * n, Wt).reshape(K, n)
    sweeps = [max_iter] * K
    running = list(range(K))
    for sweep in range(1, max_iter + 1):
        old = _copy(Wt)
        _hals_sweep(Wt, num, G, 0.0, 0.0, False, stack, bounds)
        diff = S @ ((Wt - old) ** 2)
        size = S @ (Wt * Wt)
        # Frozen (problem, row) pairs keep their previous value.
        Wt = _where(active[of_row], Wt, old)
        active &= diff > (tol * tol) * _clamp_min(size, _tiny(Wt))
        still = _host(active.any(axis=1) if _np(active) else active.any(dim=1)) > 0
        for k in [k for k in running if not still[k]]:
            sweeps[k] = sweep
            running.remove(k)
        if not running:
            break
    return [(_contig(Wt[lo:hi].T), sweeps[k]) for k, (lo, hi) in enumerate(bounds)]


def solve_w_kl(X, H, d, *, l1_W=0.0, l2_W=0.0, max_iter=200, tol=1e-4):
    """W with H fixed for the weighted KL loss (multiplicative updates)."""
    n = X.shape[0]
    r = H.shape[0]
    W = _full((n, r), 1.0, H)
    if n:
        scale = np.sqrt(max(_sum64(X) / (X.shape[0] * X.shape[1]), EPSILON) / r)
        W *= scale
    W, _, n_iter, _ = fit_mu(
        X,
        W,
        H,
        d,
        xnorm=kl_xconst(X, d),
        beta_loss="kullback-leibler",
        l1_W=l1_W,
        l2_W=l2_W,
        max_iter=max_iter,
        tol=tol,
        update_H=False,
    )
    return W, n_iter


# -------------------------------------------------------------------- init
# CholeskyQR2 (torch path of _orth_blocks) is trusted while the diagonal of a
# block's Cholesky factor spans at most this ratio (a lower bound of the
# block's condition number): its loss of orthogonality grows as
# eps64 * cond^2, so 1e6 leaves a wide margin. Other blocks use Householder.
_CHOLQR_MAX_RATIO = 1e6


class _Blocks:
    """Column blocks of a (rows x L) tensor, handled as one zero-padded batch.

    Block i holds columns ``lo_i:lo_i + widths[i]``; :meth:`batch` gathers
    them into a K x rows x m float64 batch (m the widest block, the padding
    zero), :meth:`unbatch` puts such a batch back. A few kernel launches for
    all the blocks, whatever their number: this is what makes the stacked
    initialisations of a rank sweep cheap on a GPU. With ``batched=False``
    (NumPy, and torch on the CPU, where a QR per block is cheaper) only the
    bounds are kept, and the blocks are handled one by one.
    """

    def __init__(self, widths, like, batched):
        self.batched = bool(batched) and not _np(like)
        self.widths = list(widths)
        self.K, self.m, self.L = len(widths), max(widths), sum(widths)
        self.bounds = _bounds(self.widths)
        col = np.full((self.K, self.m), self.L)  # L: an appended zero column
        for i, (lo, hi) in enumerate(self.bounds):
            col[i, : hi - lo] = np.arange(lo, hi)
        if not self.batched:
            return
        torch = _t()
        valid = col < self.L
        dev = like.device
        self._gather = torch.as_tensor(col.ravel(), device=dev)
        self._keep = torch.as_tensor(np.flatnonzero(valid.ravel()), device=dev)
        self.valid = torch.as_tensor(valid, device=dev)
        # identity on the padding: the padded Gram matrices stay definite
        pad = np.zeros((self.K, self.m, self.m))
        for i, w in enumerate(self.widths):
            pad[i, np.arange(w, self.m), np.arange(w, self.m)] = 1.0
        self.pad_eye = torch.as_tensor(pad, dtype=torch.float64, device=dev)

    def chunks(self, A):
        """Row ranges of ``A`` whose batches hold _TORCH_CHUNK_ELEMENTS entries."""
        return _row_steps(A.shape[0], self.K * self.m, A)

    def batch(self, A):
        rows = A.shape[0]
        Az = _t().cat([A, A.new_zeros(rows, 1)], dim=1)[:, self._gather]
        return _to64(Az).reshape(rows, self.K, self.m).permute(1, 0, 2)

    def unbatch(self, Ab):
        rows = Ab.shape[1]
        return Ab.permute(1, 0, 2).reshape(rows, self.K * self.m)[:, self._keep]

    def grams(self, A):
        """K x m x m float64: each block's ``A_i.T @ A_i``, identity-padded."""
        G = self.pad_eye.clone()
        for s, e in self.chunks(A):
            Ab = self.batch(A[s:e])
            G += Ab.transpose(1, 2) @ Ab
        return G

    def times(self, A, M, *, grams=False):
        """float64 ``A_i @ M_i`` for every block (M: K x m x m), as rows x L.

        ``grams``: also return :meth:`grams` of the result, from the batches
        at hand (for a padding kept zero by ``M``, as a Cholesky inverse does).
        """
        out = _zeros((A.shape[0], self.L), A, float64=True)
        G = self.pad_eye.clone() if grams else None
        for s, e in self.chunks(A):
            P = self.batch(A[s:e]) @ M
            if grams:
                G += P.transpose(1, 2) @ P
            out[s:e] = self.unbatch(P)
        return (out, G) if grams else out


def _orth_blocks(Y, blocks):
    """An orthonormal basis of each column block of ``Y`` (n x L), and a check.

    Not ``blocks.batched``: a Householder QR per block; the check is None.
    Batched: CholeskyQR2 in float64 on all blocks at once (two rounds of
    ``Q_i = Y_i R_i^{-1}``, ``R_i`` the Cholesky factor of ``Y_i.T Y_i``),
    without waiting for the device; the check is a boolean tensor, False for
    a block whose factor failed or was too ill-conditioned for CholeskyQR2
    (``_CHOLQR_MAX_RATIO``). Such a block's columns are garbage (maybe NaN),
    but every operation here stays within a block, so the others are not
    touched: the caller reads the checks once at the end and redoes those
    blocks (:func:`_sketch_group`). Both ways give the Q of a QR factorization,
    equal up to the signs of its columns, which the randomized SVD does not
    depend on.
    """
    if not blocks.batched:
        return _hcat([_qr(Y[:, lo:hi]) for lo, hi in blocks.bounds]), None
    torch = _t()
    eye = torch.eye(blocks.m, dtype=torch.float64, device=Y.device)

    def inverse_factor(G):
        """``R^{-1}`` of every block's Cholesky factor, and whether to trust it."""
        L, info = torch.linalg.cholesky_ex(G)
        diag = L.diagonal(dim1=1, dim2=2)
        hi = torch.where(blocks.valid, diag, 0.0).amax(dim=1)
        lo = torch.where(blocks.valid, diag, float("inf")).amin(dim=1)
        good = (info == 0) & (hi <= _CHOLQR_MAX_RATIO * lo)
        Rinv = torch.linalg.solve_triangular(L, eye, upper=False).transpose(1, 2)
        return Rinv, good

    Rinv, ok1 = inverse_factor(blocks.grams(Y))
    # the second round's Gram matrices come with the first round's product
    Q, G = blocks.times(Y, Rinv, grams=True)
    Rinv, ok2 = inverse_factor(G)
    return _cast(blocks.times(Q, Rinv), Y), ok1 & ok2


def _svd_blocks(Q, B, blocks, ks, C, skip=()):
    """Leading ``ks[i]`` singular triplets of ``Q_i @ B_i`` for every block.

    ``Q`` (n x L) has orthonormal column blocks, ``B`` (L x p) the matching
    row blocks. Returns U (n x sum(ks)), S (sum(ks),), Vt (sum(ks) x p), the
    ranks one after the other. Not ``blocks.batched``: an SVD per block.
    Batched: the eigenvectors of the float64 Gram matrices ``C_i = B_i B_i.T``
    (``C``: their host copy, K x m x m, from :func:`_finish_sketches`; small,
    solved on the host), then two products for all the blocks; each
    singular value is the norm of its row ``u_i.T B_i``, which is also
    normalized to give the row of Vt (a zero row, for an exactly zero
    singular value, stays zero). Singular values
    below about ``sqrt(eps64) * S[0]`` lose relative accuracy that way, which
    float32 data never had. Blocks in ``skip`` (failed, see
    :func:`_orth_blocks`) give zeros.
    """
    if not blocks.batched:
        Us, Ss, Vts = [], [], []
        for (lo, hi), k in zip(blocks.bounds, ks):
            Ub, S, Vt = _svd(B[lo:hi])
            Us.append((Q[:, lo:hi] @ Ub)[:, :k])
            Ss.append(S[:k])
            Vts.append(Vt[:k])
        return _hcat(Us), _concat(Ss), _concat(Vts)
    torch = _t()
    M = np.zeros((sum(ks), blocks.L))  # the blocks' leading eigenvectors
    row = 0
    for i, ((lo, hi), k) in enumerate(zip(blocks.bounds, ks)):
        if i not in skip:
            w = hi - lo
            _, vecs = np.linalg.eigh(C[i, :w, :w])
            M[row : row + k, lo:hi] = vecs[:, ::-1][:, :k].T
        row += k
    if skip:  # their NaN would reach every row through the products
        bad = torch.as_tensor(
            [j for i in skip for j in range(*blocks.bounds[i])], device=B.device
        )
        Q, B = Q.clone(), B.clone()
        Q[:, bad] = 0
        B[bad] = 0
    M = _from_host(M, B)
    P = M @ B
    S = torch.linalg.vector_norm(P, dim=1, dtype=torch.float64)
    scale = torch.where(S > 0, 1.0 / S, 0.0)
    return Q @ M.T, _cast(S, B), P * _cast(scale, B)[:, None]


def _block_index(bounds, positions):
    """The indices of the ranges ``bounds[b]`` for b in ``positions``, in order."""
    return [j for b in positions for j in range(*bounds[b])]


def _take_blocks(Q, M, ok, bounds, positions):
    """The column blocks ``positions`` of ``Q``, the matching row blocks of
    ``M`` and entries of ``ok`` (None stays None)."""
    cols = _block_index(bounds, positions)
    okp = None if ok is None else _take(ok, positions)
    return _take(Q, cols, axis=1), _take(M, cols), okp


def _finish_sketches(Q, B, blocks, ks, ok, redo, ids):
    """The SVDs of finished sketches (``Q``, ``B`` and ``ok`` of these blocks).

    Batched: one wait for the device (the checks, with the Gram matrices); a
    rank whose CholeskyQR2 failed at some step is redone by ``redo(ids[i])``.
    Returns a list of ``(U, S, Vt)``, one per block.
    """
    C, failed = None, set()
    if blocks.batched:
        C = blocks.grams(B.T)
        C, ok = C.cpu().numpy(), ok.cpu().tolist()  # the one wait
        failed = {i for i, fine in enumerate(ok) if not fine}
    U, S, Vt = _svd_blocks(Q, B, blocks, ks, C, failed)
    return [
        redo(ids[i]) if i in failed else (U[:, lo:hi], S[lo:hi], Vt[lo:hi])
        for i, (lo, hi) in enumerate(_bounds(ks))
    ]


def _sketch_group(X, s, omegas, ks, iters, batched):
    """The randomized SVDs of ranks ``ks``, rank i with ``iters[i]`` power iterations.

    ``omegas``: each rank's host sketch (p x ell). Returns a list of
    ``(U, S, Vt)``, one per rank. One schedule for all: the product that ends
    the ranks with fewer iterations (their ``B``) is the one that starts the
    next iteration of the others, so every product with X serves every rank
    still running. Batched, the device is waited for once per set of ranks
    that end together (the checks of all their orthonormalizations, with the
    Gram matrices of their SVDs); a rank whose CholeskyQR2 failed at some
    step is redone alone with Householder QRs, from the same sketch.
    """
    act = list(range(len(ks)))  # the ranks still running
    widths = [o.shape[1] for o in omegas]
    blocks = _Blocks(widths, s, batched)
    omega = _from_host(np.hstack(omegas), s)
    Q, ok = _orth_blocks(_h_xt((omega * s[:, None]).T, X).T, blocks)
    out = [None] * len(ks)

    def redo(i):
        return _sketch_group(X, s, [omegas[i]], [ks[i]], [iters[i]], False)[0]

    j = 0
    while True:
        M = _w_x(Q.T, X) * s  # B of the ranks that end here; else Z's start
        done = [b for b, i in enumerate(act) if iters[i] == j]
        keep = [b for b, i in enumerate(act) if iters[i] > j]
        if done:
            if keep:  # the blocks that end here, apart
                sub = _Blocks([widths[act[b]] for b in done], s, batched)
                Qd, Bd, okd = _take_blocks(Q, M, ok, blocks.bounds, done)
            else:
                sub, Qd, Bd, okd = blocks, Q, M, ok
            ends = [act[b] for b in done]
            fin = _finish_sketches(Qd, Bd, sub, [ks[i] for i in ends], okd, redo, ends)
            for i, part in zip(ends, fin):
                out[i] = part
        if not keep:
            return out
        if done:  # the stack shrinks to the ranks still running
            Q, M, ok = _take_blocks(Q, M, ok, blocks.bounds, keep)
            act = [act[b] for b in keep]
            blocks = _Blocks([widths[i] for i in act], s, batched)
        Z, ok_z = _orth_blocks(M.T, blocks)
        Q, ok_q = _orth_blocks(_h_xt((Z * s[:, None]).T, X).T, blocks)
        if ok is not None:
            ok = ok & ok_z & ok_q
        j += 1


def _batched_default(X, n_ranks):
    """Whether :func:`randomized_svds_weighted` batches by default: on a CUDA
    device, for more than one rank.

    On a CPU the per-rank LAPACK calls are faster (``bench_inits.py``, 2,000
    x 2,564 float32, ranks 1-30 one at a time: about 2.6 s against 4 s
    batched). On a GPU the batch pays off for a stack of ranks only: on an
    H200 (``bench_gpu.py``, 10,000 x 2,564 float32, 2026-11-27), 30 sketches
    of one rank each took 0.40-0.43 s with a Householder QR and an SVD per
    step, against 0.76-0.88 s through the batched path, and the 30 ranks
    stacked 0.22-0.25 s batched.
    """
    return bool(getattr(X, "is_cuda", False)) and n_ranks > 1


def randomized_svds_weighted(
    X, s, ks, rngs, *, n_oversamples=10, n_iter="auto", batched=None
):
    """Truncated SVDs of ``X * s`` (column scaling) at several ranks at once.

    Rank ``ks[i]`` gets what :func:`randomized_svd_weighted` with ``rngs[i]``
    gives (the same sketch, drawn from ``rngs[i]`` the same way; results equal
    to float rounding), but the sketches of all ranks sit side by side: each
    product with X serves every rank, and the blocks are orthonormalized
    together (:func:`_orth_blocks`). A rank sweep on a GPU pays a few kernel
    launches per step instead of a QR per rank and step.

    ``batched`` (torch only): orthonormalize and take the small SVDs of all
    ranks in a few batched operations (:class:`_Blocks`) instead of one QR
    and one SVD per rank. None: :func:`_batched_default`.

    The sketches are drawn in the order of ``ks`` before any product: ranks
    that share one generator object draw them one after the other (a
    one-rank call per rank would interleave other draws between them).

    Returns U (n x sum(ks)), S (sum(ks),), Vt (sum(ks) x p), the ranks one
    after the other in the order of ``ks``, on X's side (NumPy or X's device).
    """
    n, p = X.shape
    ells = [min(k + n_oversamples, n, p) for k in ks]
    if n_iter == "auto":
        iters = [7 if k < 0.1 * min(n, p) else 4 for k in ks]
    else:
        iters = [n_iter] * len(ks)
    if batched is None:
        batched = _batched_default(X, len(ks))
    # Drawn by NumPy whatever the array type, so that one random_state gives
    # the same sketch on every backend.
    omegas = [rng.standard_normal(size=(p, ell)) for rng, ell in zip(rngs, ells)]
    parts = _sketch_group(X, s, omegas, list(ks), iters, batched)
    if len(parts) == 1:
        return parts[0]
    U = _hcat([u for u, _, _ in parts])
    S = _concat([sv for _, sv, _ in parts])
    Vt = _concat([vt for _, _, vt in parts])
    return U, S, Vt


def randomized_svd_weighted(
    X, s, k, rng, *, n_oversamples=10, n_iter="auto", batched=None
):
    """Truncated SVD of ``X * s`` (column scaling) without forming it.

    Halko et al. randomized range finder with QR-normalized power iterations
    (:func:`randomized_svds_weighted` with one rank). Returns U (n x k),
    S (k,), Vt (k x p).
    """
    return randomized_svds_weighted(
        X, s, [k], [rng], n_oversamples=n_oversamples, n_iter=n_iter, batched=batched
    )


def nndsvd(U, S, Vt, *, eps=1e-6):
    """NNDSVD (Boutsidis & Gallopoulos, 2008) from a truncated SVD."""
    n, k = U.shape
    p = Vt.shape[1]
    W = np.zeros((n, k), dtype=U.dtype)
    H = np.zeros((k, p), dtype=U.dtype)
    W[:, 0] = np.sqrt(S[0]) * np.abs(U[:, 0])
    H[0] = np.sqrt(S[0]) * np.abs(Vt[0])
    for j in range(1, k):
        x, y = U[:, j], Vt[j]
        xp, yp = np.maximum(x, 0), np.maximum(y, 0)
        xn, yn = np.maximum(-x, 0), np.maximum(-y, 0)
        nxp, nyp = np.linalg.norm(xp), np.linalg.norm(yp)
        nxn, nyn = np.linalg.norm(xn), np.linalg.norm(yn)
        mp, mn = nxp * nyp, nxn * nyn
        if mp > mn:
            u, v, sigma = xp / nxp, yp / nyp, mp
        elif mn > 0:
            u, v, sigma = xn / nxn, yn / nyn, mn
        else:  # exactly zero singular vector pair: leave the component empty
            continue
        lbd = np.sqrt(S[j] * sigma)
        W[:, j] = lbd * u
        H[j] = lbd * v
    W[W < eps] = 0
    H[H < eps] = 0
    return W, H
