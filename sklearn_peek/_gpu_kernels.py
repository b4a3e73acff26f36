"""Triton kernels for the torch path on a GPU.

**One-launch HALS sweep** (:func:`sweep`). A HALS sweep updates the r rows of
a factor ``A`` (r x m) one after the other, but every column of ``A`` is
independent of the others: column j only needs its own r entries, row t of
the small Gram matrix ``G`` and ``num[t, j]``. The eager sweep in
:mod:`sklearn_peek._solvers` issues about three array operations per row, so
a rank-20 iteration costs over a hundred kernel launches, which is what
limits small problems on a GPU. Here one program keeps a tile of columns in
registers and runs the r row updates on it in sequence: one launch per
sweep, with no host synchronisation. The arithmetic is that of the eager
sweep::

    A[t] = max((num[t] - l1 - sum_{s != t} G[t, s] A[s]) / (G[t, t] + l2), 0)

with the same treatment of an empty row (``G[t, t] <= 0``: the row is kept,
or set to zero when there is a penalty). Only the order of the floating-point
additions differs. ``l1`` and ``l2`` are scalars or vectors over the columns.

**Weighted residual in one pass** (:func:`weighted_residual`):
``sum_j d_j sum_i (X - W H)_ij^2`` for float32, without forming ``W H``. The
eager code forms the residual chunk by chunk (a product, a subtraction, a
square and a reduction: about seven passes over X's size in memory traffic);
this kernel reads every entry of X once, forms its tile of ``W H`` in
registers (in IEEE float32, never TF32) and writes one float64 partial sum
per tile.

**Stacked HALS sweep** (:func:`sweep_stacked`): the sweep of every problem
of a stack built by :func:`sklearn_peek._solvers.fit_hals_batched` (several
ranks fitted at once), one launch, each program reading only its problem's
diagonal block of the Gram matrix.

A kernel that fails to compile or launch turns the kernels off for the
process with a warning (:func:`disable`); the callers then run the eager
code. They are used for CUDA tensors when Triton 3.0 or later is importable.
The environment variable ``SKLEARN_PEEK_GPU_KERNELS=0`` turns them off
(the eager code is then used everywhere). With ``TRITON_INTERPRET=1`` set
before this module is first used, Triton's interpreter runs them on CPU
tensors too: that is how the test suite checks them on a machine without a
GPU.
"""

from __future__ import annotations

import contextlib
import os

# Largest rank handled by the sweep kernel (its tile holds whole columns) and
# by the residual kernel (W's tile holds whole rows).
MAX_RANK = 256
MAX_RANK_RESIDUAL = 128

_STATE = {"kernel": None, "tried": False}


def _interpret():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _supported_triton(version):
    """Whether Triton ``version`` can build the kernels (3.0 and later).

    Triton 2.x (shipped with torch 2.2 and 2.3) is not used: its interpreter
    refuses these kernels (it looks for ``triton.language`` among a kernel's
    module globals, and they are built inside :func:`_build`), so the tests
    cannot check them with it. The eager code runs there, without a warning.
    """
    from sklearn_peek._backend import version_at_least

    return version_at_least(version, (3,))


def _build():
    """The jitted kernel, or None when Triton is missing or turned off."""
    # The kernels' shared pieces are module globals: Triton's interpreter
    # runs a kernel from its source in the module's globals, without the
    # closure of this function (the kernels themselves are built here so
    # that Triton stays optional).
    global tile_dot, tile_rank_one, weighted_sq_sum
    if _STATE["tried"]:
        return _STATE["kernel"]
    _STATE["tried"] = True
    if os.environ.get("SKLEARN_PEEK_GPU_KERNELS", "1") == "0":
        return None
    try:
        import triton
        import triton.language as tl
    except Exception:  # ImportError, or a broken install: use the eager sweep
        return None
    if not _supported_triton(triton.__version__):
        return None

    @triton.jit
    def hals_rows(
        A,
        NUM,
        G,
        L1,
        L2,
        r,
        m,
        stride_a,
        stride_num,
        stride_num_c,
        stride_g,
        L1_MODE: tl.constexpr,
        L2_MODE: tl.constexpr,
        HAS_PEN: tl.constexpr,
        R: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        cols = pid * BLOCK + tl.arange(0, BLOCK)
        cmask = cols < m
        rows = tl.arange(0, R)
        rmask = rows < r
        tile_mask = rmask[:, None] & cmask[None, :]
        a = tl.load(
            A + rows[:, None] * stride_a + cols[None, :], mask=tile_mask, other=0.0
        )
        # Penalties: 0 = none, 1 = one value (L[0]), 2 = one per column.
        if L1_MODE == 2:
            pen1 = tl.load(L1 + cols, mask=cmask, other=0.0)
        elif L1_MODE == 1:
            pen1 = tl.load(L1)
        else:
            pen1 = 0.0
        if L2_MODE == 2:
            pen2 = tl.load(L2 + cols, mask=cmask, other=0.0)
        elif L2_MODE == 1:
            pen2 = tl.load(L2)
        else:
            pen2 = 0.0
        for t in range(0, r):
            is_t = rows == t
            g = tl.load(G + t * stride_g + rows, mask=rmask & (rows != t), other=0.0)
            gtt = tl.load(G + t * stride_g + t)
            num = tl.load(
                NUM + t * stride_num + cols * stride_num_c, mask=cmask, other=0.0
            )
            rest = tl.sum(g[:, None] * a, axis=0)
            den = gtt + pen2
            safe = tl.where(den > 0, den, 1.0)
            new = tl.maximum((num - pen1 - rest) / safe, 0.0)
            if HAS_PEN:
                new = tl.where(gtt > 0, new, 0.0)
            else:
                old = tl.sum(tl.where(is_t[:, None], a, 0.0), axis=0)
                new = tl.where(gtt > 0, new, old)
            a = tl.where(is_t[:, None], new[None, :].to(a.dtype), a)
        tl.store(A + rows[:, None] * stride_a + cols[None, :], a, mask=tile_mask)

    @triton.jit
    def hals_rows_stacked(
        A,
        NUM,
        G,
        OFF,
        SIZE,
        m,
        stride_a,
        stride_num,
        stride_num_c,
        stride_g,
        R: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        # hals_rows without penalties for problem k = program_id(1) of a
        # stack: its rows are OFF[k] .. OFF[k] + SIZE[k] of A, num and G (only
        # G's diagonal block is read). Work per column: SIZE[k] x R, not the
        # stack height squared.
        pid = tl.program_id(0)
        k = tl.program_id(1)
        off = tl.load(OFF + k)
        r = tl.load(SIZE + k)
        cols = pid * BLOCK + tl.arange(0, BLOCK)
        cmask = cols < m
        rows = tl.arange(0, R)
        rmask = rows < r
        tile_mask = rmask[:, None] & cmask[None, :]
        a_ptr = A + (off + rows)[:, None] * stride_a + cols[None, :]
        a = tl.load(a_ptr, mask=tile_mask, other=0.0)
        for t in range(0, r):
            is_t = rows == t
            g_row = G + (off + t) * stride_g + off
            g = tl.load(g_row + rows, mask=rmask & (rows != t), other=0.0)
            gtt = tl.load(g_row + t)
            num = tl.load(
                NUM + (off + t) * stride_num + cols * stride_num_c,
                mask=cmask,
                other=0.0,
            )
            rest = tl.sum(g[:, None] * a, axis=0)
            safe = tl.where(gtt > 0, gtt, 1.0)
            new = tl.maximum((num - rest) / safe, 0.0)
            old = tl.sum(tl.where(is_t[:, None], a, 0.0), axis=0)
            new = tl.where(gtt > 0, new, old)
            a = tl.where(is_t[:, None], new[None, :].to(a.dtype), a)
        tl.store(a_ptr, a, mask=tile_mask)

    @triton.jit
    def tile_dot(
        WT, H, rows, kmask, rm, mmask, rn, nmask, stride_wk, stride_wm, stride_h
    ):
        # The tile (rm, rn) of W H over the rows ``rows`` of WT and H by the
        # matrix units, in IEEE float32; the rows off ``kmask`` count as zero.
        w = tl.load(
            WT + rows[None, :] * stride_wk + rm[:, None] * stride_wm,
            mask=kmask[None, :] & mmask[:, None],
            other=0.0,
        )
        h = tl.load(
            H + rows[:, None] * stride_h + rn[None, :],
            mask=kmask[:, None] & nmask[None, :],
            other=0.0,
        )
        return tl.dot(w, h, input_precision="ieee")

    @triton.jit
    def tile_rank_one(
        WT, H, first, r, rm, mmask, rn, nmask, stride_wk, stride_wm, stride_h,
        BM: tl.constexpr, BN: tl.constexpr,
    ):  # fmt: skip
        # The same tile over rows first .. first + r - 1, as r rank-one
        # updates (no padding).
        wh = tl.zeros((BM, BN), dtype=tl.float32)
        for j in range(0, r):
            row = tl.cast(first + j, tl.int64)
            wk = tl.load(WT + row * stride_wk + rm * stride_wm, mask=mmask, other=0.0)
            hk = tl.load(H + row * stride_h + rn, mask=nmask, other=0.0)
            wh += wk[:, None] * hk[None, :]
        return wh

    @triton.jit
    def weighted_sq_sum(x, wh, dw):
        # sum_j dw_j sum_i (x - wh)_ij^2 over the tile, the columns' sums in
        # float32, their weighted total in float64
        diff = x - wh
        col = tl.sum(diff * diff, axis=0)
        return tl.sum(col.to(tl.float64) * dw.to(tl.float64), axis=0)

    @triton.jit
    def residual_tiles(
        X,
        WT,
        H,
        D,
        OUT,
        n,
        p,
        r,
        stride_x,
        stride_wk,
        stride_wm,
        stride_h,
        R: tl.constexpr,
        BM: tl.constexpr,
        BN: tl.constexpr,
        DOT: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        # 64-bit offsets: X may hold more than 2**31 entries.
        rm = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)
        rn = (pid_n * BN + tl.arange(0, BN)).to(tl.int64)
        rk = tl.arange(0, R)
        mmask = rm < n
        nmask = rn < p
        if DOT:  # the tile of W H in one product, padded to R >= 16
            wh = tile_dot(
                WT, H, rk, rk < r, rm, mmask, rn, nmask, stride_wk, stride_wm, stride_h
            )
        else:
            wh = tile_rank_one(
                WT, H, 0, r, rm, mmask, rn, nmask,
                stride_wk, stride_wm, stride_h, BM, BN,
            )  # fmt: skip
        x = tl.load(
            X + rm[:, None] * stride_x + rn[None, :],
            mask=mmask[:, None] & nmask[None, :],
            other=0.0,
        )
        dw = tl.load(D + rn, mask=nmask, other=0.0)
        part = weighted_sq_sum(x, wh, dw)
        tl.store(OUT + pid_m * tl.num_programs(1) + pid_n, part)

    @triton.jit
    def residual_tiles_stacked(
        X,
        WT,
        H,
        D,
        OFF,
        SIZE,
        OUT,
        n,
        p,
        n_prob,
        stride_x,
        stride_wk,
        stride_wm,
        stride_h,
        BM: tl.constexpr,
        BN: tl.constexpr,
        DOT: tl.constexpr,
    ):
        # residual_tiles for every problem of a stack: the tile of X is read
        # once; problem k's partial sum goes to OUT[k, tile]. With DOT, a
        # problem's tile of W H is a sum of products of 16 rows at a time
        # (rows past its rank masked to zero); without, rank-one updates.
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        n_tiles = tl.num_programs(0) * tl.num_programs(1)
        tile = pid_m * tl.num_programs(1) + pid_n
        rm = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)
        rn = (pid_n * BN + tl.arange(0, BN)).to(tl.int64)
        rk = tl.arange(0, 16)
        mmask = rm < n
        nmask = rn < p
        x = tl.load(
            X + rm[:, None] * stride_x + rn[None, :],
            mask=mmask[:, None] & nmask[None, :],
            other=0.0,
        )
        dw = tl.load(D + rn, mask=nmask, other=0.0).to(tl.float64)
        for k in range(0, n_prob):
            off = tl.load(OFF + k)
            r = tl.load(SIZE + k)
            if DOT:
                wh = tl.zeros((BM, BN), dtype=tl.float32)
                for c in range(0, r, 16):
                    rows = (off + c + rk).to(tl.int64)
                    kmask = (c + rk) < r
                    wh += tile_dot(
                        WT, H, rows, kmask, rm, mmask, rn, nmask,
                        stride_wk, stride_wm, stride_h,
                    )  # fmt: skip
            else:
                wh = tile_rank_one(
                    WT, H, off, r, rm, mmask, rn, nmask,
                    stride_wk, stride_wm, stride_h, BM, BN,
                )  # fmt: skip
            part = weighted_sq_sum(x, wh, dw)
            tl.store(OUT + k * n_tiles + tile, part)

    _STATE["kernel"] = (
        triton,
        hals_rows,
        residual_tiles,
        hals_rows_stacked,
        residual_tiles_stacked,
    )
    return _STATE["kernel"]


def _span(t):
    """Elements between a tensor's first and last entry (its offsets' range)."""
    return 1 + sum((size - 1) * abs(step) for size, step in zip(t.shape, t.stride()))


# The sweep kernels compute offsets in 32 bits.
_MAX_SPAN = 2**31 - 1


def usable(A, num, G, *, height=None):
    """True when :func:`sweep` (or, with ``height``, the largest problem of a
    stack: :func:`sweep_stacked`) can run on these tensors."""
    import torch

    if not (A.is_cuda or (_interpret() and A.device.type == "cpu")):
        return False
    if A.dtype not in (torch.float32, torch.float64):
        return False
    tile = A.shape[0] if height is None else height
    if not 0 < tile <= MAX_RANK or A.shape[1] == 0:
        return False
    for arr in (A, num, G):
        if arr.dtype != A.dtype or arr.device != A.device:
            return False
    # A and G row-major; num any layout (the products with X come transposed).
    if A.stride(-1) != 1 or G.stride(-1) != 1:
        return False
    if max(_span(A), _span(num), _span(G)) > _MAX_SPAN:
        return False
    return _build() is not None


def _block(R):
    """Columns per program: the tile (R x BLOCK) stays near 4096 entries."""
    block = 16
    while block < 128 and R * block * 2 <= 4096:
        block *= 2
    return block


def sweep(A, num, G, l1, l2):
    """One HALS sweep over the rows of ``A`` in place (see the module doc)."""
    import torch

    triton, kernel = _build()[:2]
    r, m = A.shape
    # At least 16 rows: fewer tile shapes to compile (a rank sweep meets
    # many ranks); the rows beyond r are masked and cost little.
    R = max(16, triton.next_power_of_2(r))
    block = _block(R)

    def penalty(value):
        # Passed as arrays of A's dtype: a Python float would reach the kernel
        # as float32 and round a float64 penalty. A zero scalar is no penalty
        # (an empty row is then kept, not zeroed); a vector is a penalty
        # without a look at its entries (no host synchronisation), as in the
        # eager sweep (see _solvers._is_zero).
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return 2, value.to(device=A.device, dtype=A.dtype).contiguous()
        if float(value) == 0.0:
            return 0, A
        return 1, torch.full((1,), float(value), dtype=A.dtype, device=A.device)

    l1_mode, L1 = penalty(l1)
    l2_mode, L2 = penalty(l2)
    has_pen = l1_mode > 0 or l2_mode > 0
    grid = (triton.cdiv(m, block),)
    kernel[grid](
        A,
        num,
        G,
        L1,
        L2,
        r,
        m,
        A.stride(0),
        num.stride(0),
        num.stride(1),
        G.stride(0),
        L1_MODE=l1_mode,
        L2_MODE=l2_mode,
        HAS_PEN=has_pen,
        R=R,
        BLOCK=block,
    )
    return A


def residual_usable(X, Wt, H, d, *, stacked=False):
    """True when :func:`weighted_residual` (``stacked``:
    :func:`weighted_residuals_stacked`) can run on these tensors."""
    import torch

    if not (X.is_cuda or (_interpret() and X.device.type == "cpu")):
        return False
    if X.dtype != torch.float32 or X.layout != torch.strided:
        return False
    max_rank = None if stacked else MAX_RANK_RESIDUAL
    if H.shape[0] == 0 or (max_rank is not None and H.shape[0] > max_rank):
        return False
    if X.shape[0] * X.shape[1] == 0:
        return False
    for arr in (X, Wt, H, d):
        if arr.dtype != X.dtype or arr.device != X.device:
            return False
    if X.stride(-1) != 1 or H.stride(-1) != 1 or d.stride(-1) != 1:
        return False
    return _build() is not None


# Tile shape, warps and variant of the residual kernel (see bench_gpu.py),
# and the variant of the stacked one (see profile_gpu_sweep.py): separate,
# since rank-one updates can win for one rank but lose badly for a stack.
RESIDUAL_CONFIG = {"block": (64, 128), "num_warps": 4, "dot": True, "stacked_dot": True}


def weighted_residual(X, Wt, H, d, *, block=None, num_warps=None, dot=None):
    """``sum_j d_j sum_i (X - Wt.T @ H)_ij^2`` (one pass), as a 0-d float64
    tensor on the device (nothing is read back).

    ``block`` (rows, columns of a tile), ``num_warps`` and ``dot`` (form the
    tile of ``W H`` with ``tl.dot`` rather than rank-one updates) default to
    :data:`RESIDUAL_CONFIG`.
    """
    import torch

    triton, _, kernel = _build()[:3]
    n, p = X.shape
    r = H.shape[0]
    R = max(16, triton.next_power_of_2(r))
    bm, bn = block or RESIDUAL_CONFIG["block"]
    if R > 32 and block is None:
        bm, bn = 64, 64
    warps = num_warps or RESIDUAL_CONFIG["num_warps"]
    use_dot = RESIDUAL_CONFIG["dot"] if dot is None else bool(dot)
    grid = (triton.cdiv(n, bm), triton.cdiv(p, bn))
    out = torch.empty(grid[0] * grid[1], dtype=torch.float64, device=X.device)
    kernel[grid](
        X,
        Wt,
        H,
        d,
        out,
        n,
        p,
        r,
        X.stride(0),
        Wt.stride(0),
        Wt.stride(1),
        H.stride(0),
        R=R,
        BM=bm,
        BN=bn,
        DOT=use_dot,
        num_warps=warps,
    )
    return out.sum()


@contextlib.contextmanager
def turned_off():
    """Run the block with the kernels off (the eager code), then restore them.

    For comparisons such as ``benchmarks/bench_gpu.py``'s; users set
    ``SKLEARN_PEEK_GPU_KERNELS=0`` instead.
    """
    saved = dict(_STATE)
    _STATE.update(kernel=None, tried=True)
    try:
        yield
    finally:
        _STATE.clear()
        _STATE.update(saved)


def disable(exc):
    """Turn the kernels off for this process after ``exc`` (with a warning).

    A kernel that fails to compile or launch (an unsupported GPU or Triton
    version, say) must not stop a fit: the caller then runs the eager code.
    """
    import warnings

    _STATE.update(kernel=None, tried=True)
    warnings.warn(
        f"sklearn_peek: a Triton kernel failed ({type(exc).__name__}: {exc}); "
        "the GPU path continues without the kernels (slower, same results). "
        "Set SKLEARN_PEEK_GPU_KERNELS=0 to skip them from the start.",
        RuntimeWarning,
        stacklevel=3,
    )


def stack_layout(sizes, like):
    """Row offsets and heights of the problems of a stack, as int32 tensors."""
    import torch

    off = [0]
    for size in sizes[:-1]:
        off.append(off[-1] + int(size))
    return (
        torch.tensor(off, dtype=torch.int32, device=like.device),
        torch.tensor([int(v) for v in sizes], dtype=torch.int32, device=like.device),
        max(int(v) for v in sizes),
    )


def sweep_stacked(A, num, G, layout):
    """HALS sweeps of every problem of a stack (no penalties), one launch.

    ``layout`` is :func:`stack_layout` of the problems' heights; ``G`` need
    only be right on its diagonal blocks.
    """
    triton, _, _, kernel = _build()[:4]
    off, size, rmax = layout
    m = A.shape[1]
    R = max(16, triton.next_power_of_2(rmax))
    block = _block(R)
    grid = (triton.cdiv(m, block), off.shape[0])
    kernel[grid](
        A,
        num,
        G,
        off,
        size,
        m,
        A.stride(0),
        num.stride(0),
        num.stride(1),
        G.stride(0),
        R=R,
        BLOCK=block,
    )
    return A


def weighted_residuals_stacked(X, Wt, H, d, layout, *, dot=None):
    """:func:`weighted_residual` of every problem of a stack, one pass over X.

    ``Wt`` (R x n) and ``H`` (R x p) hold the problems' rows as ``layout``
    (:func:`stack_layout`) says. Returns a float64 tensor of one sum per
    problem, on the device (nothing is read back). ``dot`` (default:
    ``RESIDUAL_CONFIG["stacked_dot"]``) forms each problem's tile of ``W H``
    with ``tl.dot`` over 16 rows at a time, else with rank-one updates (on
    an H200, ranks 1-30 of a 10,000 x 2,564 matrix: 1.8 ms per call against
    6.6 ms).
    """
    import torch

    triton = _build()[0]
    kernel = _build()[4]
    off, size, _ = layout
    n, p = X.shape
    bm, bn = 64, 128
    grid = (triton.cdiv(n, bm), triton.cdiv(p, bn))
    k = off.shape[0]
    out = torch.empty((k, grid[0] * grid[1]), dtype=torch.float64, device=X.device)
    kernel[grid](
        X,
        Wt,
        H,
        d,
        off,
        size,
        out,
        n,
        p,
        k,
        X.stride(0),
        Wt.stride(0),
        Wt.stride(1),
        H.stride(0),
        BM=bm,
        BN=bn,
        DOT=RESIDUAL_CONFIG["stacked_dot"] if dot is None else bool(dot),
    )
    return out.sum(dim=1)
