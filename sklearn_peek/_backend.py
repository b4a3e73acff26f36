"""Device resolution and array conversion, in one place.

Every estimator takes a ``device`` parameter and hands it to
:func:`resolve_device`. ``torch`` is imported only when a device other than
the plain NumPy CPU path is asked for, so ``import sklearn_peek`` stays cheap.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading

import numpy as np

#: "cuda" or "cuda:N": N without leading zeros, at most 6 digits (torch.device
#: refuses "cuda:00" and indices beyond int64 with a RuntimeError)
CUDA_RE = re.compile(r"^cuda(:(0|[1-9]\d{0,5}))?$")

DEVICE_HELP = (
    "None or 'cpu' (NumPy on the CPU), 'auto' (a CUDA GPU when torch sees one, "
    "else the CPU), 'cuda', 'cuda:N', or a torch.device"
)


def version_at_least(version, minimum):
    """Whether the release string ``version`` is at least ``minimum``.

    ``minimum`` is a tuple of ints, compared with the leading number of each
    of ``version``'s first ``len(minimum)`` dot-separated parts ("3.6.0+git1"
    and "2.0.0rc1" read as 3.6 and 2.0). A version that does not start with
    numbers ("dev") is not taken as new enough.
    """
    parts = []
    for piece in str(version).split(".")[: len(minimum)]:
        match = re.match(r"\d+", piece)
        if match is None:
            return False
        parts.append(int(match.group()))
    return tuple(parts) >= tuple(minimum)


_TORCH = None


def _torch():
    """The torch module, imported on first use (the NumPy path never needs
    it) and kept: the solvers ask for it in their inner loops."""
    global _TORCH
    if _TORCH is None:
        import torch

        _TORCH = torch
    return _TORCH


def resolve_device(device, *, param="device"):
    """Turn a user's ``device`` value into ``None`` (NumPy) or a torch.device.

    Parameters
    ----------
    device : None, str or torch.device
        ``None`` and ``"cpu"`` select the NumPy path. ``"auto"`` selects the
        first CUDA device when torch sees one and the NumPy path otherwise,
        quietly. ``"cuda"`` and ``"cuda:N"`` select that GPU and raise when it
        is not there. A ``torch.device`` selects the torch path on that device;
        ``torch.device("cpu")`` runs the torch code on the CPU.
    param : str, default="device"
        Name of the argument, used in error messages.

    Returns
    -------
    torch.device or None
        ``None`` means the NumPy path.

    Raises
    ------
    ValueError
        If the value is not one of the accepted forms, or a GPU is asked for
        that torch cannot see.
    """
    if device is None:
        return None
    if isinstance(device, str):
        name = device.strip().lower()
        if name == "cpu":
            return None
        if name == "auto":
            torch = _torch()
            return torch.device("cuda") if torch.cuda.is_available() else None
        if CUDA_RE.match(name):
            torch = _torch()
            _check_cuda(torch, torch.device(name), device, param)
            return torch.device(name)
        raise ValueError(
            f"{param}={device!r} is not understood; expected {DEVICE_HELP}."
        )
    try:
        torch = _torch()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        torch = None
    if torch is not None and isinstance(device, torch.device):
        if device.type == "cuda":
            _check_cuda(torch, device, device, param)
        elif device.type != "cpu":
            raise ValueError(
                f"{param}={device!r}: only CPU and CUDA torch devices are supported."
            )
        return device
    raise ValueError(f"{param}={device!r} is not understood; expected {DEVICE_HELP}.")


def cuda_shortfall(torch, dev, *, fallback):
    """What the CUDA device ``dev`` lacks, worded to follow "asks for", or None.

    Shared by :func:`resolve_device` and the command line's ``--device``;
    ``fallback`` is the caller's advice for when torch sees no GPU at all
    (``device='auto'`` or ``--device auto``), added after the reason.
    """
    if not torch.cuda.is_available():
        return (
            f"a CUDA GPU, but torch sees none (torch {torch.__version__}, CUDA "
            f"build: {torch.version.cuda is not None}). {fallback}"
        )
    index = dev.index if dev.index is not None else 0
    count = torch.cuda.device_count()
    if index >= count:
        return (
            f"GPU {index}, but torch sees only {count} GPU(s) (indices 0..{count - 1})."
        )
    return None


def _check_cuda(torch, dev, original, param):
    shortfall = cuda_shortfall(
        torch,
        dev,
        fallback="Use device='auto' to fall back to the CPU quietly, or device=None.",
    )
    if shortfall is not None:
        raise ValueError(f"{param}={original!r} asks for {shortfall}")


def is_torch_tensor(x):
    """True if ``x`` is a torch tensor, without importing torch needlessly."""
    mod = type(x).__module__
    return mod.startswith("torch") and hasattr(x, "detach")


def to_numpy(x):
    """Return ``x`` as a NumPy array on the host (no copy when it already is)."""
    if is_torch_tensor(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# Rows per chunk when scanning a tensor: bounds the boolean temporaries.
_SCAN_ELEMENTS = 1 << 24


def sequence_items(value):
    """The items of ``value`` as a list, or None when it is not a sequence.

    NumPy scalars become Python numbers, and a 1-D torch tensor counts as its
    values (read in one transfer; it iterates as 0-d tensors, which are no
    ``numbers.Integral``), as a NumPy array does. Strings are not sequences
    here.
    """
    if is_torch_tensor(value) and value.ndim == 1:
        value = to_numpy(value)
    if isinstance(value, (str, bytes)) or not np.iterable(value):
        return None
    return [v.item() if isinstance(v, np.generic) else v for v in value]


def select_compute_device(device, X=None, *, param="device"):
    """Where the numerics run: ``None`` (NumPy) or a torch.device.

    The rule shared by the estimators. ``device=None`` follows the data: a
    torch tensor runs the torch code on the tensor's device, anything else
    the NumPy code. ``"cpu"`` (and ``"auto"`` without a GPU) selects the CPU:
    NumPy for NumPy input, the torch code on the CPU for torch tensors (no
    conversion). ``"cuda"``, ``"cuda:N"``, ``"auto"`` with a GPU and
    ``torch.device`` objects select the torch code on that device.

    Parameters
    ----------
    device : None, str or torch.device
        The estimator's ``device`` parameter.
    X : object, default=None
        The data about to be processed.
    param : str, default="device"
        Name of the argument, used in error messages.

    Returns
    -------
    torch.device or None

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn_peek._backend import select_compute_device
    >>> select_compute_device(None, np.ones((2, 2))) is None
    True
    >>> select_compute_device(None, torch.ones(2, 2))
    device(type='cpu')
    >>> select_compute_device("cpu", torch.ones(2, 2))
    device(type='cpu')
    """
    if device is None:
        return X.device if is_torch_tensor(X) else None
    dev = resolve_device(device, param=param)
    if dev is None and is_torch_tensor(X):
        return _torch().device("cpu")
    return dev


def numpy_dtype(x):
    """NumPy float dtype matching an array's or a tensor's dtype."""
    if is_torch_tensor(x):
        return np.dtype(str(x.dtype).replace("torch.", ""))
    return np.dtype(x.dtype)


def compute_tensor(X, device, *, dtype=None, param="X", where=None):
    """Validate a 2-D non-negative input and return it as a tensor on ``device``.

    Parameters
    ----------
    X : torch.Tensor or ndarray of shape (n_rows, n_cols)
        NumPy arrays must already be validated (float32 / float64).
    device : torch.device
    dtype : numpy dtype or None, default=None
        Target dtype. None: float32 and float64 tensors keep their dtype
        (other tensor dtypes become float32); NumPy arrays keep theirs on the
        CPU and become float32 on a CUDA device.
    param, where : str
        Argument and caller names for the error messages.

    Returns
    -------
    torch.Tensor
        C-contiguous, on ``device``. No copy when ``X`` already fits.

    Raises
    ------
    ValueError
        Wrong number of axes, no rows or columns, complex values, NaN, inf or
        negative entries (the message gives the first position and value).
    """
    torch = _torch()
    caller = f"{where} " if where else ""
    if not is_torch_tensor(X):
        if dtype is None:
            dtype = np.float32 if device.type == "cuda" else X.dtype
        return torch.from_numpy(np.ascontiguousarray(X, dtype=dtype)).to(device)
    if X.dim() != 2:
        raise ValueError(
            f"{caller}argument {param} must be 2-D (n_samples, n_features); got a "
            f"tensor of shape {tuple(X.shape)}."
        )
    if X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(
            f"{caller}argument {param} has shape {tuple(X.shape)}; expected at least "
            "1 sample and 1 feature."
        )
    if X.is_complex():
        raise ValueError(
            f"Complex data not supported: {caller}argument {param} has dtype "
            f"{X.dtype}; expected real floats."
        )
    if X.device.type not in ("cpu", "cuda"):
        raise ValueError(
            f"{caller}argument {param} is a tensor on device {str(X.device)!r}; "
            "expected a CPU or CUDA tensor (the torch code runs on those only)."
        )
    if X.is_sparse or X.layout != torch.strided:
        raise ValueError(
            f"{caller}argument {param} is a sparse torch tensor ({X.layout}); "
            "expected a dense tensor (X.to_dense())."
        )
    if dtype is None:
        tdt = X.dtype if X.dtype in (torch.float32, torch.float64) else torch.float32
    else:
        tdt = getattr(torch, np.dtype(dtype).name)
    X = X.detach().to(device=device, dtype=tdt).contiguous()
    # One pass in the common, clean case: NaN anywhere makes both NaN.
    lo, hi = torch.aminmax(X)
    if not bool(torch.isfinite(lo) & torch.isfinite(hi) & (lo >= 0)):
        _raise_first_bad(X, param, caller)
    return X


def _raise_first_bad(X, param, caller):
    """Name the first NaN, inf or negative entry of the tensor ``X``.

    Scans row chunks (bounded temporaries) in the order the NumPy check of
    :mod:`sklearn_peek._validation` uses, and raises its message.
    """
    import torch

    from sklearn_peek._validation import _raise

    step = max(1, _SCAN_ELEMENTS // X.shape[1])
    for s in range(0, X.shape[0], step):
        chunk = X[s : s + step]
        for kind, bad in (
            ("nonfinite", ~torch.isfinite(chunk)),
            ("negative", chunk < 0),
        ):
            if bool(bad.any()):
                r, c = (int(v) for v in torch.nonzero(bad)[0])
                _raise(kind, param, caller, s + r, c, float(chunk[r, c]), None, param)


def like_input(result, X):
    """Give ``result`` (ndarray or tensor) the kind of the caller's input ``X``.

    Torch tensors in, torch tensors out, on ``X``'s device; anything else in,
    NumPy out (on the host).
    """
    if is_torch_tensor(X):
        torch = _torch()
        if is_torch_tensor(result):
            return result.to(X.device)
        return torch.from_numpy(np.ascontiguousarray(result)).to(X.device)
    return to_numpy(result)


def fmt_bytes(n):
    """A byte count for messages: ``"1.5 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024


def device_free_memory(dev):
    """Free bytes on a CUDA device now; None for other devices."""
    if getattr(dev, "type", None) != "cuda":
        return None
    return int(_torch().cuda.mem_get_info(dev)[0])


def available_memory():
    """Bytes of host memory available now (None when it cannot be told)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return None


# single_threaded(): how many blocks hold the limit now, and how to undo it.
_ONE_THREAD_LOCK = threading.Lock()
_ONE_THREAD = {"holders": 0, "undo": None}


@contextlib.contextmanager
def single_threaded():
    """Run the block with one torch thread and one BLAS/OpenMP thread.

    BLAS thread counts (OpenBLAS, MKL) and torch's belong to the process,
    not to a thread: under joblib's threading backend, blocks that each saved
    them on entry and put them back on exit would overlap, and one ending
    could restore the "1" that another had set (leaving the process
    single-threaded) or lift the limit while others still run. Here
    overlapping and nested blocks share one limit of those: the first to
    enter saves the counts and sets them to one, the last to leave restores
    them. OpenMP's count is the calling thread's own, so each block sets and
    restores its thread's.
    """
    from threadpoolctl import threadpool_limits

    with _ONE_THREAD_LOCK:
        if _ONE_THREAD["holders"] == 0:
            torch = _torch()
            old = torch.get_num_threads()
            blas = threadpool_limits(limits=1, user_api="blas")
            torch.set_num_threads(1)

            def undo():
                blas.restore_original_limits()
                torch.set_num_threads(old)

            _ONE_THREAD["undo"] = undo
        _ONE_THREAD["holders"] += 1
    try:
        openmp = threadpool_limits(limits=1, user_api="openmp")
        try:
            yield
        finally:
            openmp.restore_original_limits()
    finally:
        with _ONE_THREAD_LOCK:
            _ONE_THREAD["holders"] -= 1
            if _ONE_THREAD["holders"] == 0:
                undo, _ONE_THREAD["undo"] = _ONE_THREAD["undo"], None
                undo()


@contextlib.contextmanager
def torch_threads(n):
    """Run the block with ``n`` torch intra-op threads, then restore the count."""
    torch = _torch()
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
