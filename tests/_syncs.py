"""Count the host synchronisations that sklearn_peek's torch code asks for.

On a GPU, every value read back by the host (``float(t)``, ``bool(t)``,
``t.item()``, ``t.tolist()``, ``t.cpu()``, ``t.numpy()``) and every operation
whose output size depends on the data (``nonzero``, boolean-mask indexing,
``unique``, ...) waits for the device to finish all the work queued before
it. These calls are visible on the CPU too, so the test suite can hold the
GPU path to a budget of synchronisations per iteration without a GPU.

Only calls made directly by sklearn_peek code are counted (the first caller
outside torch is a module of ``sklearn_peek``): the copies that Triton's
interpreter makes to run a kernel on the CPU are not synchronisations on a
GPU. A ``.to(device)`` is not counted: on the CPU the tests cannot tell a
copy to the host from a move to the data's own device. Nor is a copy from
the host to the device (``torch.tensor(values, device=...)``), which torch
also synchronises when it is not ``non_blocking``: on the CPU it is no copy
at all. ``tests/test_gpu.py`` counts every synchronisation on CUDA with
``torch.cuda.set_sync_debug_mode``.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten operators that read a value back, or size their output from the data.
_SYNC_OPS = {
    "_local_scalar_dense",
    "is_nonzero",
    "equal",
    "nonzero",
    "nonzero_static",
    "masked_select",
    "unique",
    "_unique",
    "_unique2",
    "unique_consecutive",
    "unique_dim",
    "repeat_interleave",
}
# Indexing operators: a synchronisation when an index is a boolean mask.
_INDEX_OPS = {"index", "index_put", "index_put_", "_index_put_impl_"}
# Tensor methods that copy to host memory.
_HOST_METHODS = ("tolist", "numpy", "cpu")


def _caller():
    """``module:function`` of the first frame outside torch and this module,
    or None when that frame is not sklearn_peek code."""
    frame = sys._getframe(2)
    while frame is not None:
        mod = frame.f_globals.get("__name__", "")
        if not (mod == __name__ or mod == "torch" or mod.startswith("torch.")):
            if mod == "sklearn_peek" or mod.startswith("sklearn_peek."):
                return f"{mod}:{frame.f_code.co_name}"
            return None
        frame = frame.f_back
    return None


def _has_mask(indices):
    return any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
        for i in indices or ()
        if i is not None
    )


class _Mode(TorchDispatchMode):
    def __init__(self, counts):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        sync = name in _SYNC_OPS or (
            name in _INDEX_OPS and len(args) > 1 and _has_mask(args[1])
        )
        if sync:
            where = _caller()
            if where is not None:
                self.counts[f"{name} in {where}"] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_host_syncs():
    """Count, in the ``Counter`` it yields, the synchronisations by caller.

    Keys are ``"<operator or method> in <module>:<function>"``.
    """
    counts = collections.Counter()
    # A counted .cpu() marks its result: the next .numpy() or .tolist() of it
    # is the same transfer, not a second one (the mark is used up then; on
    # the CPU, .cpu() returns the tensor itself).
    marked = weakref.WeakValueDictionary()

    def counted(method, orig):
        def wrapper(self, *args, **kwargs):
            where = _caller()
            again = method != "cpu" and marked.pop(id(self), None) is self
            if where is not None and not again:
                counts[f"{method} in {where}"] += 1
            out = orig(self, *args, **kwargs)
            if method == "cpu":
                marked[id(out)] = out
            return out

        return wrapper

    for method in _HOST_METHODS:  # inherited from TensorBase, not in Tensor
        setattr(torch.Tensor, method, counted(method, getattr(torch.Tensor, method)))
    try:
        with _Mode(counts):
            yield counts
    finally:
        for method in _HOST_METHODS:
            delattr(torch.Tensor, method)


def syncs_per_iteration(fit, few=10, many=30):
    """Synchronisations per iteration of ``fit(max_iter)`` (steady state).

    ``fit`` runs twice, with ``few`` and ``many`` iterations; the difference
    of the counts, divided by ``many - few``, leaves out the fixed cost of a
    fit (setup, initialization, final errors). Returns ``(per_iteration,
    by_caller)``, the second a dict of the per-iteration rate by caller.
    """
    counts = {}
    for n in (few, many):
        with count_host_syncs() as c:
            fit(n)
        counts[n] = c
    diff = collections.Counter(counts[many])
    diff.subtract(counts[few])
    steps = many - few
    by_caller = {k: v / steps for k, v in diff.items() if v}
    return sum(diff.values()) / steps, by_caller


def _data(device, seed=0):
    """300 x 120 non-negative float32 data of rank about 8, as a tensor."""
    import numpy as np

    rng = np.random.RandomState(seed)
    X = rng.rand(300, 8) @ rng.rand(8, 120) + 0.05 * rng.rand(300, 120)
    return torch.from_numpy(X.astype(np.float32)).to(device)


def _cases(device):
    """The fits whose synchronisations per iteration the tests hold to a
    budget: ``name -> fit(max_iter)``. ``tol=0`` runs every iteration (the
    objective is still read every iteration: HALS records it); ``exact``
    uses a tolerance so small that every objective is computed from the
    explicit residual."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from sklearn_peek import CoupledNMF, _solvers, fit_ranks

    X = _data(device)
    kw = {"blocks": [40, 80], "random_state": 0, "tol": 0.0}
    rng = torch.Generator().manual_seed(0)
    Hs = [torch.rand(k, 120, generator=rng).to(device) for k in (2, 3, 5)]
    d = torch.ones(120, device=device)

    def quiet(fit):
        def run(n):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                fit(n)

        return run

    return {
        "hals": quiet(lambda n: CoupledNMF(6, max_iter=n, **kw).fit(X)),
        "hals, H penalties": quiet(
            lambda n: CoupledNMF(6, max_iter=n, alpha_W=0.01, l1_ratio=0.5, **kw).fit(X)
        ),
        "hals, exact objective": quiet(
            lambda n: CoupledNMF(6, max_iter=n, **{**kw, "tol": 1e-30}).fit(X)
        ),
        "mu": quiet(lambda n: CoupledNMF(6, max_iter=n, solver="mu", **kw).fit(X)),
        "fit_ranks": quiet(
            lambda n: fit_ranks(CoupledNMF(max_iter=n, **kw), X, [1, 2, 4, 6])
        ),
        "fit_ranks, exact objective": quiet(
            lambda n: fit_ranks(
                CoupledNMF(max_iter=n, **{**kw, "tol": 1e-30}), X, [1, 2, 4, 6]
            )
        ),
        "solve_w_batched": lambda n: _solvers.solve_w_batched(
            X, Hs, d, max_iter=n, tol=0.0
        ),
    }


def rates(device, names=None):
    """``{name: (per_iteration, by_caller)}`` for the cases on ``device``."""
    cases = _cases(device)
    # MU reads its objective every 10 iterations: count over whole periods.
    # The others read every iteration: a few iterations tell (the Triton
    # interpreter runs the kernels slowly).
    spans = {"mu": (10, 30)}
    return {
        name: syncs_per_iteration(fit, *spans.get(name, (2, 6)))
        for name, fit in cases.items()
        if names is None or name in names
    }


# Per iteration of the eager torch code: the HALS sweeps read the Gram
# diagonal (one read per factor: 2), the objective is read once. Solving W
# for a stack of H: one diagonal, one stopping test per sweep. MU reads its
# objective every 10 iterations.
EAGER_BUDGET = {
    "hals": 3,
    "hals, H penalties": 3,  # the penalty vectors are checked once per fit
    # the explicit residual is computed before the read, and read with the
    # Gram sums, once the previous objective needed it
    "hals, exact objective": 3,
    "mu": 0.1,
    "fit_ranks": 3,
    # the residuals of the ranks that needed them, in the same read
    "fit_ranks, exact objective": 3,
    "solve_w_batched": 2,
}

# The budget of host synchronisations per iteration with the kernels: the
# sweeps read nothing back (the eager sweeps read the Gram diagonal), so
# one read of the objective per iteration remains (see test_host_syncs.py).
KERNEL_BUDGET = {
    "hals": 1,
    "hals, H penalties": 1,
    "hals, exact objective": 1,  # the residual kernel's sum in the same read
    "mu": 0.1,
    "fit_ranks": 1,
    "fit_ranks, exact objective": 1,
    "solve_w_batched": 1,
}
