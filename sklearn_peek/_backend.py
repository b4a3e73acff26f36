"""Device resolution and array conversion, in one place.

Every estimator takes a ``device`` parameter and hands it to
:func:`resolve_device`. ``torch`` is imported only when a device other than
the plain NumPy CPU path is asked for, so ``import sklearn_peek`` stays cheap.
"""

from __future__ import annotations

import re

import numpy as np

_CUDA_RE = re.compile(r"^cuda(:\d+)?$")

DEVICE_HELP = (
    "None or 'cpu' (NumPy on the CPU), 'auto' (a CUDA GPU when torch sees one, "
    "else the CPU), 'cuda', 'cuda:N', or a torch.device"
)


def _torch():
    import torch

    return torch


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
        if _CUDA_RE.match(name):
            torch = _torch()
            _check_cuda(torch, torch.device(name), device, param)
            return torch.device(name)
        raise ValueError(f"{param}={device!r} is not understood; expected {DEVICE_HELP}.")
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


def _check_cuda(torch, dev, original, param):
    if not torch.cuda.is_available():
        raise ValueError(
            f"{param}={original!r} asks for a CUDA GPU, but torch sees none "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda is not None}). "
            "Use device='auto' to fall back to the CPU quietly, or device=None."
        )
    index = dev.index if dev.index is not None else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(
            f"{param}={original!r} asks for GPU {index}, but torch sees only {count} "
            f"GPU(s) (indices 0..{count - 1})."
        )


def is_torch_tensor(x):
    """True if ``x`` is a torch tensor, without importing torch needlessly."""
    mod = type(x).__module__
    return mod.startswith("torch") and hasattr(x, "detach")


def to_numpy(x):
    """Return ``x`` as a NumPy array on the host (no copy when it already is)."""
    if is_torch_tensor(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)
