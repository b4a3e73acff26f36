"""LayerActivationExtractor: images -> [input | layer_1 | layer_2 ...] matrix.

The estimator validates, plans the blocks and runs the batches; everything
that depends on the runtime (torch or onnxruntime) lives in one adapter per
runtime (``_torch.py``, ``_onnx.py``) with the same small interface:
``list_layers``, ``auto_layers``, ``resolve``, ``all_names``, ``run``,
``model_input_shape``, ``image_layout``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
import os
import warnings
from numbers import Integral
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.utils.validation import check_is_fitted

from .._backend import available_memory as _available_memory
from .._backend import (
    device_free_memory,
    fmt_bytes,
    is_torch_tensor,
    resolve_device,
    to_numpy,
)
from .._progress import progress_bar, ticking
from .._validation import (
    Interval,
    StrOptions,
    caller_stacklevel,
    close_matches,
    string_feature_names,
    transform_output,
    validate_params,
)
from ._channels import ChannelMismatchError, UnknownLayerError

#: Parameters that fit turns into the fitted extractor (see _check_unchanged).
_LAYOUT_PARAMS = (
    "model",
    "layers",
    "include_input",
    "input_shape",
    "pooling",
    "nonneg",
    "channel_repeat",
    "input_name",
    "extra_inputs",
    "onnx_optimization",
)


def _same(now, was):
    """``now`` is ``was``, or equal to it when both are plain values: a path
    (a Path equals its string), bytes, names, a shape (a list equals the
    tuple of its items), an array of those (a joblib round trip copies it), a
    torch.device. A network or a dict of arrays counts as the same only when
    it is the same object."""
    if now is was:
        return True
    if type(now).__name__ == type(was).__name__ == "device":  # torch.device
        return now == was
    plain = (str, bytes, os.PathLike, numbers.Number, tuple, list, np.bool_)

    def canonical(v):
        if isinstance(v, np.ndarray) and v.ndim <= 1 and v.dtype != object:
            return tuple(v.tolist())
        if isinstance(v, os.PathLike):
            return os.fspath(v)
        return tuple(v) if isinstance(v, list) else v

    now, was = canonical(now), canonical(was)
    if not (isinstance(now, plain) and isinstance(was, plain)):
        return False
    try:
        return bool(now == was)
    except (TypeError, ValueError):  # e.g. arrays inside a list
        return False


def _short(value):
    """A parameter value for a message: networks and bytes by type and size."""
    if isinstance(value, np.ndarray) and value.ndim <= 1 and value.size <= 20:
        return repr(value.tolist())
    if isinstance(value, (str, os.PathLike, numbers.Number, tuple, list, type(None))):
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return f"<{type(value).__name__} object at {id(value):#x}>"


#: At most this many layers are picked by ``layers="auto"``.
MAX_AUTO_LAYERS = 8
#: transform refuses to allocate more than this fraction of available memory.
MEMORY_FRACTION = 0.5


# -- helpers shared by the estimator and available_layers ----------------------
def _make_adapter(
    model, device=None, input_name=None, extra_inputs=None, optimization="disable"
):
    from ._onnx import OnnxAdapter, is_onnx_model
    from ._torch import TorchAdapter, is_torch_module

    if is_torch_module(model):
        if input_name is not None or extra_inputs:
            raise ValueError(
                "input_name and extra_inputs apply to ONNX models only; a torch "
                "module is called with the image batch as its one argument (wrap "
                "it in a module that supplies the other arguments)."
            )
        return TorchAdapter(model, device)
    if is_onnx_model(model):
        return OnnxAdapter(
            model,
            device,
            input_name=input_name,
            extra_inputs=extra_inputs,
            optimization=optimization,
        )
    raise TypeError(
        f"model={type(model).__name__} object is not supported; expected a "
        "torch.nn.Module, or an ONNX model as a file path, bytes or onnx.ModelProto."
    )


def _check_input_shape(input_shape):
    if input_shape is None:
        return None
    if isinstance(input_shape, numbers.Integral):
        input_shape = (input_shape,)
    try:
        shape = tuple(int(d) for d in input_shape)
        ok = all(d > 0 for d in shape) and len(shape) >= 1
        ok = ok and all(int(d) == d for d in input_shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"input_shape={input_shape!r} is not understood; expected a tuple of "
            "positive ints giving one sample's shape, e.g. (1, 28, 28)."
        )
    return shape


def _block_name(name):
    while "__" in name:
        name = name.replace("__", "_")
    return name


def poolable(name, shape):
    """Whether ``pooling`` pools the block ``name`` of per-sample ``shape``
    (as recorded before pooling): a layer with a channel axis and spatial
    ones, ``(C, H, W)`` or ``(C, L)``; never the input."""
    return name != "input" and len(shape) >= 2


class NoAutoLayersError(ValueError):
    """``layers="auto"`` found no layer to probe (the command line rewords it)."""


class RepeatedLayerError(ValueError):
    """``layers`` names one layer twice; ``names`` are the repeated ones,
    ``aliases`` whether two different names among them are one layer (a node
    and its output tensor)."""

    def __init__(self, names, aliases=False):
        super().__init__(f"layers names the same layer more than once: {names}.")
        self.names = names
        self.aliases = aliases

    def __reduce__(self):  # pickled with its names (joblib workers)
        return type(self), (self.names, self.aliases)


def _resolve_layers(adapter, layers, rows):
    """Turn ``layers`` into a list of (requested name, canonical name) pairs."""
    if isinstance(layers, str) and layers == "auto":
        pairs = adapter.auto_layers(rows)
        if not pairs:
            raise NoAutoLayersError(
                "layers='auto' found no non-negative activation (ReLU-like) or "
                "pooling layer in the model; pass layers=[...] explicitly (see "
                "available_layers(model)) together with nonneg='relu', 'split' or "
                "'shift'."
            )
        if len(pairs) > MAX_AUTO_LAYERS:
            # Keep the last candidate of each top-level part of the model.
            last = {}
            for name, group in pairs:
                last[group] = name
            pairs = [(n, g) for n, g in pairs if last[g] == n]
        names = [n for n, _ in pairs]
        if len(names) > MAX_AUTO_LAYERS:
            idx = np.linspace(0, len(names) - 1, MAX_AUTO_LAYERS).round().astype(int)
            names = [names[i] for i in sorted(set(idx))]
        return [(n, n) for n in names]
    if isinstance(layers, str):
        layers = [layers]
    try:
        layers = list(layers)
    except TypeError:
        raise ValueError(
            f"layers={layers!r} is not understood; expected 'auto', a layer name or a "
            "list of layer names."
        ) from None
    out = []
    known = adapter.all_names()
    for name in layers:
        if not isinstance(name, str):
            raise ValueError(
                f"layers contains {name!r} ({type(name).__name__}); layer names are "
                "strings."
            )
        canon = adapter.resolve(name)
        if canon is None:
            near = close_matches(name, known, n=5, cutoff=0.5)
            raise UnknownLayerError(name, near, adapter.kind)
        out.append((name, canon))
    canons = [c for _, c in out]
    dup = sorted({n for n, c in out if canons.count(c) > 1})
    if dup:
        aliases = any(len({n for n, c2 in out if c2 == c}) > 1 for _, c in out)
        raise RepeatedLayerError(dup, aliases)
    return out


def _warn_unscaled(arr, param="X"):
    """Warn when integer-typed ``arr`` holds values above 1 (raw 0-255 pixels?).

    Nothing is rescaled (a scikit-learn estimator does not change its input
    behind the caller's back); the warning says so, and float input, whatever
    its range, is taken as meant.
    """
    if arr.dtype.kind not in "iu" or arr.size == 0:
        return
    top = arr.max()
    if top <= 1:
        return
    warnings.warn(
        f"{param} has dtype {arr.dtype} with values up to {top}; they are fed to "
        "the model as they are, without scaling. A network trained on images in "
        "[0, 1] expects X / 255 (the command line divides uint8 data by 255 "
        "unless --scale none); pass a float array, e.g. X.astype(np.float32), to "
        "use the values as they are without this warning.",
        UserWarning,
        stacklevel=caller_stacklevel(),
    )


def _as_array(X, param="X", *, warn_integers=True):
    """X as an ndarray with at least 2 axes; clear errors otherwise.

    Floats come back as float32; integers and booleans as they are (a
    memory-mapped uint8 image set stays on disk): every batch is converted
    to float32 when it runs (``_process``), so the model sees the same values.

    The messages follow scikit-learn's wording where it has one, so its
    estimator checks recognise them. ``warn_integers``: warn about integer
    data that looks unscaled (see ``_warn_unscaled``).
    """
    if sp.issparse(X) or type(X).__module__.startswith("sparse"):
        raise TypeError(
            f"{param} is a sparse matrix ({type(X).__name__}); sparse input is not "
            "supported: pass a dense array of images (X.toarray())."
        )
    if is_torch_tensor(X):
        X = to_numpy(X)
    elif hasattr(X, "to_numpy") and hasattr(X, "columns"):
        X = X.to_numpy()
    try:
        arr = np.asarray(X)
    except Exception as exc:
        raise ValueError(f"{param} could not be read as an array: {exc}") from exc
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(
            f"Complex data not supported: {param} has dtype {arr.dtype}; expected "
            "real floats."
        )
    if arr.dtype == object:
        arr = arr.astype(np.float64)  # raises TypeError on non-numbers
    elif not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(
            f"{param} has dtype {arr.dtype}; expected numbers (images as floats)."
        )
    if arr.ndim < 2:
        raise ValueError(
            f"{param} has shape {arr.shape}; expected (n_samples, n_features) with "
            "input_shape, or (n_samples, C, H, W). Reshape your data with "
            "X.reshape(1, -1) for a single sample."
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{param} has 0 samples (shape {arr.shape}).")
    if arr.size == 0:
        raise ValueError(
            f"0 feature(s) (shape={arr.shape}) while a minimum of 1 is required: "
            f"{param} has no values per sample."
        )
    if warn_integers:
        _warn_unscaled(arr, param)
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        return arr
    return arr.astype(np.float32, copy=False)


class NegativeActivationError(ValueError):
    """Raised under ``nonneg="error"`` when the input or a layer has negative values.

    Attributes
    ----------
    what : str
        The offending data, e.g. ``"layer 'conv1' (block 'conv1')"`` or
        ``"the input X"``.
    minimum : float
        Its smallest value.
    """

    def __init__(self, what, minimum, message):
        # All three in args, so that pickle and copy (joblib workers) can
        # rebuild the error; str() is the message alone.
        super().__init__(what, minimum, message)
        self.what = what
        self.minimum = minimum
        self.message = message

    def __str__(self):
        return self.message


def _check_finite(a, what, start, need_min=True):
    """Raise on NaN/inf in ``a`` (rows = samples from ``start``); return its min.

    Two reductions (min and max) instead of an isfinite mask keep the common,
    clean case cheap. Without ``need_min`` (returns None) one pass does: the
    dot product of ``a`` with itself is finite unless ``a`` holds NaN or inf
    (or values so large that it overflows, which the exact check below then
    clears). NumPy arrays and torch tensors alike.
    """
    if need_min:
        lo, hi = float(a.min()), float(a.max())
        if np.isfinite(lo) and np.isfinite(hi):
            return lo
    else:
        flat = a.reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):  # checked below
            norm2 = float(flat @ flat)
        if np.isfinite(norm2):
            return None
        if bool((a.isfinite() if is_torch_tensor(a) else np.isfinite(a)).all()):
            return None  # the dot product overflowed: the values are finite
    flat = (
        to_numpy(a.reshape(len(a), -1)) if is_torch_tensor(a) else a.reshape(len(a), -1)
    )
    row, col = (int(k) for k in np.argwhere(~np.isfinite(flat))[0])
    raise ValueError(
        f"{what} has NaN or infinite values (first at sample {start + row}, "
        f"feature {col}: {float(flat[row, col])!r}); expected finite values: the "
        "extractor does not drop or replace them."
    )


def _relu(a):
    """max(a, 0) for arrays and tensors (a new array)."""
    return a.clamp(min=0) if is_torch_tensor(a) else np.maximum(a, 0)


def _concat_cols(parts):
    if is_torch_tensor(parts[0]):
        import torch

        return torch.cat(parts, dim=1)
    return np.concatenate(parts, axis=1)


def _tensor_like(a, like):
    """A NumPy array as a float32 tensor on ``like``'s device (``like``: a
    tensor or a torch.device)."""
    import torch

    dev = like if isinstance(like, torch.device) else like.device
    return torch.as_tensor(np.asarray(a), device=dev).to(torch.float32)


def _check_memory(n, n_out, avail, where, ways_out):
    """Raise MemoryError when an (n, n_out) float32 matrix would take more than
    ``MEMORY_FRACTION`` of ``avail`` bytes (None: unknown, no check)."""
    need = n * n_out * 4
    if avail is not None and need > MEMORY_FRACTION * avail:
        raise MemoryError(
            f"the activation matrix needs {fmt_bytes(need)} ({n} samples x "
            f"{n_out} features x 4 bytes), more than {MEMORY_FRACTION:.0%} of "
            f"the {where} memory ({fmt_bytes(avail)}). Ways out: {ways_out}."
        )


def _feature_suffixes(shape, pooled):
    """Feature names inside one block, from the block's per-sample shape."""
    size = math.prod(shape)
    if len(shape) == 3 and not pooled:
        c, h, w = shape
        return [f"c{i}_y{y}_x{x}" for i in range(c) for y in range(h) for x in range(w)]
    if len(shape) == 2 and not pooled:
        c, w = shape
        return [f"c{i}_x{x}" for i in range(c) for x in range(w)]
    if pooled and len(shape) == 1:
        return [f"c{i}" for i in range(size)]
    return [f"u{i}" for i in range(size)]


def _channel_axis_rule(sample_shape, adapter, channel_repeat):
    """Whether samples of ``sample_shape`` get a channel axis in front.

    None: they keep their shape. ``"added"``: they are (H, W) images for an
    ONNX model that takes (C, H, W) ones. ``"tentative"``: the same for a
    torch model whose first convolution takes one channel (any number with
    ``channel_repeat``); a module that adds the axis itself does not run on
    them, and is then fed the samples as given (see ``_fit``).
    """
    layout = adapter.image_layout()
    if layout is None or len(sample_shape) != layout[0] - 1:
        return None
    if adapter.kind == "onnx":
        return "added"
    return "tentative" if layout[1] == 1 or channel_repeat else None


def _feed_shape(sample_shape, adapter, channel_repeat, no_axis=False):
    """Shape given to the model and the channel repeat factor.

    ``channel_repeat`` widens a single channel to the model's channel count;
    other mismatches raise ChannelMismatchError (ONNX; a torch module is left
    to its forward pass). ``no_axis``: the caller's X had no channel axis
    (added as axis 1).
    """
    layout = adapter.image_layout()
    want = None if layout is None else layout[1]
    if want is None or len(sample_shape) < 2 or sample_shape[0] == want:
        return sample_shape, 1
    if sample_shape[0] == 1 and channel_repeat:
        return (want, *sample_shape[1:]), want
    if adapter.kind == "torch":
        # The first convolution module by definition order may not be the
        # first one to run: let the forward pass decide (its error names
        # the channel count too).
        return sample_shape, 1
    shown = sample_shape[1:] if no_axis else sample_shape
    raise ChannelMismatchError(want, shown, no_axis=no_axis)


def _to_sample_shape(X, shape):
    """``X`` as ``(n_samples, *shape)``, or None when its samples do not fit.

    Taken: flat rows of ``prod(shape)`` values, samples of ``shape`` and, when
    ``shape`` is ``(1, ...)`` (one channel), samples without the channel axis
    (given the axis, ``X[:, None]``).
    """
    if X.ndim == 2 and X.shape[1] == math.prod(shape):
        return X.reshape(X.shape[0], *shape)
    if X.shape[1:] == shape:
        return X
    if X.ndim >= 3 and shape[0] == 1 and X.shape[1:] == shape[1:]:
        return X[:, None]
    return None


def _accepted_shapes(shape):
    """The shapes of X that ``_to_sample_shape`` takes, for messages."""
    text = (
        f"(n_samples, {math.prod(shape)}) or (n_samples, {', '.join(map(str, shape))})"
    )
    if shape[0] == 1 and len(shape) > 2:
        text += f" or (n_samples, {', '.join(map(str, shape[1:]))})"
    return text


def available_layers(
    model, input_shape=None, *, channel_repeat=False, input_name=None, extra_inputs=None
):
    """List the layers of a model that the extractor can read.

    Parameters
    ----------
    model : torch.nn.Module, str, path, bytes or onnx.ModelProto
        The network.
    input_shape : tuple of int, default=None
        Shape of one sample, e.g. ``(1, 28, 28)``. Needed for torch models
        (the model is run once on zeros to learn the output shapes); for ONNX
        models taken from the model's input when it is static, else the
        shapes come from ONNX shape inference and may hold ``None``.
    channel_repeat : bool, default=False
        As in :class:`LayerActivationExtractor`: a single-channel
        ``input_shape`` is widened to the model's channels. Without it, an
        ``input_shape`` whose channels an ONNX model does not take raises
        :class:`ChannelMismatchError`.
    input_name, extra_inputs : optional
        As in :class:`LayerActivationExtractor`, for ONNX models with several
        inputs.

    Returns
    -------
    list of dict
        One row per layer, in execution order: ``name`` (what ``layers=``
        accepts), ``op_type`` (module class or ONNX op), ``shape`` (per-sample
        output shape), ``auto`` (whether ``layers="auto"`` picks it), and
        ``calls`` (torch: how often the module runs per forward pass) or
        ``node`` (ONNX: the producing node's name, accepted as an alias).

    Examples
    --------
    >>> import torch
    >>> from sklearn_peek import available_layers
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(),
    ...                           torch.nn.MaxPool2d(2))
    >>> for row in available_layers(net, input_shape=(1, 8, 8)):
    ...     print(row["name"], row["op_type"], row["shape"], row["auto"])
    0 Conv2d (2, 6, 6) False
    1 ReLU (2, 6, 6) False
    2 MaxPool2d (2, 3, 3) True
    """
    adapter = _make_adapter(model, None, input_name, extra_inputs)
    shape = _check_input_shape(input_shape)
    if shape is None:
        shape = adapter.model_input_shape()
    if shape is None and adapter.kind == "torch":
        raise ValueError(
            "input_shape=None: a torch model must be run once to learn its layer "
            "shapes; pass input_shape=(C, H, W) (one sample's shape)."
        )
    given, how = shape, None
    if shape is not None:
        how = _channel_axis_rule(shape, adapter, channel_repeat)
        if how is not None:  # (H, W) read as (1, H, W), as fit does
            shape = (1, *shape)
        shape, _ = _feed_shape(
            tuple(shape), adapter, channel_repeat, no_axis=how is not None
        )
        if adapter.kind == "onnx":  # named, before onnxruntime's own message
            adapter.check_sample_shape(shape)
    try:
        rows = adapter.list_layers(shape)
    except ValueError:
        if how != "tentative":
            raise
        rows = adapter.list_layers(tuple(given))  # a module adding the axis itself
    try:
        auto = {c for _, c in _resolve_layers(adapter, "auto", rows)}
    except ValueError:
        auto = set()
    for row in rows:
        row["auto"] = row["name"] in auto
        row.pop("reads", None)
    return rows


class LayerActivationExtractor(TransformerMixin, BaseEstimator):
    """Hidden-layer activations of a CNN as one non-negative feature matrix.

    ``transform(X)`` runs the model on the images in ``X`` in batches and
    returns the float32 matrix ``[input | layer_1 | layer_2 ...]`` with one
    row per image; :meth:`get_feature_names_out` names the columns
    ``<block>__<feature>`` so that ``CoupledNMF(blocks="auto")`` can split it.

    Parameters
    ----------
    model : torch.nn.Module, str, os.PathLike, bytes or onnx.ModelProto
        The trained network: a PyTorch module, or an ONNX model (file path,
        serialized bytes or ``ModelProto``) exported from any framework. The
        object is used as given, never modified, and shared (not copied) by
        :func:`sklearn.base.clone`.
    layers : "auto", str or list of str, default="auto"
        Layers to read. Torch: qualified module names (``"features.3"``,
        ``"layer1.0.relu"``; ``"name:k"`` selects call ``k`` of a module that
        runs several times). ONNX: tensor names, or node names as aliases.
        ``"auto"`` takes the output of every non-negative activation (torch
        ``ReLU``, ``ReLU6``, ``Sigmoid``, ``Softplus``, ``Hardsigmoid``; ONNX
        ``Relu``, ``Sigmoid``, ``Softplus``, ``HardSigmoid``, ``Clip`` with a
        lower bound >= 0), replaced by the output of a pooling step that reads
        it directly; when that gives more than 8 layers it keeps the last one
        of each top-level part of the model (torch: first component of the
        module name; ONNX: first component of the node name; a pooled output
        counts in the part of the activation it replaced), then at most 8
        evenly spaced ones.
    include_input : bool, default=True
        Put the raw input pixels first, as the block ``"input"``.
    input_shape : tuple of int, default=None
        Shape of one sample, e.g. ``(1, 28, 28)``, used to reshape a 2-D
        ``X``. When None: a 3-D or 4-D ``X`` gives it; a 2-D ``X`` is
        reshaped to the ONNX model's static input shape when there is one and
        taken as flat vectors otherwise. Single-channel images without the
        channel axis, ``(n_samples, H, W)``, get it (``X[:, None]``) when
        ``input_shape=(1, H, W)``, when the ONNX model's input is
        ``(N, C, H, W)`` with a fixed ``C`` and clearly channels-first (it
        reaches a ``Conv``, ``BatchNormalization`` or pooling node through
        elementwise ops only, without a ``Transpose``; without such a node,
        ``C <= 4`` and ``W`` dynamic or above 4: a channels-last input such as
        ``(N, 28, 28, 1)`` gets no axis and no channel advice, only a shape
        error naming both shapes), or when the torch model's first
        convolution is a ``Conv2d`` (``Conv3d`` for ``(n_samples, D, H, W)``)
        taking one channel (or any number, with ``channel_repeat=True``); a
        torch module on which that fails to run but ``X`` as given runs is fed
        ``X`` as given. Under the same conditions ``input_shape=(H, W)``
        reads as ``(1, H, W)``.
    pooling : {None, "avg", "max"}, default=None
        None keeps every unit (C x H x W features per conv layer). "avg" or
        "max" reduce each channel over its spatial positions (one feature per
        channel). Layers with a flat output and the input block are never
        pooled. Channels are assumed to be on axis 1 (NCHW).
    nonneg : {"error", "relu", "split", "shift"}, default="error"
        What to do with negative values (CoupledNMF needs non-negative data);
        applies to every block, the input included. "error": raise, naming
        the layer and its minimum. "relu": clip at 0. "split": replace ``x``
        by ``[relu(x), relu(-x)]`` (the block doubles; feature names end in
        ``_pos`` / ``_neg``). "shift": subtract from each feature the
        minimum seen during ``fit`` when that is negative (stored in
        ``shifts_``); ``transform`` raises when a value falls below that
        minimum by more than float32 rounding.
    batch_size : int, default=256
        Samples per forward pass.
    device : None, str or torch.device, default=None
        Where the model runs. None: torch models run where their parameters
        are, ONNX models on the CPU. "cpu", "cuda", "cuda:N", "auto" as in
        the rest of the library (CUDA asked for without a GPU raises). A
        torch model on another device is moved there for each call and moved
        back afterwards. ONNX models use onnxruntime's CUDAExecutionProvider
        when it is installed (onnxruntime-gpu), else the CPU with a warning.
    progress : bool or None, default=None
        Show a tqdm bar over the batches (and, with ``nonneg="shift"``, over
        fit's pass that finds the shifts). None: when stderr is a terminal or
        the code runs in a Jupyter notebook, unless the environment variable
        ``CI`` is set or this is a joblib worker process.
    input_name : str, default=None
        ONNX models with several inputs: the one that takes the images.
    extra_inputs : dict, default=None
        ONNX models with several inputs: ``{name: value}`` for the other
        inputs. A value with one axis less than the input is one sample's
        value and is repeated along the batch axis; otherwise it is fed as is.
    channel_repeat : bool, default=False
        Feed single-channel images to a model whose first layer expects 3 (or
        C) channels by repeating the channel. The input block keeps the
        original single channel. Without it, that mismatch raises. It does
        not reduce 3 channels to 1: pass ``X.mean(axis=1, keepdims=True)``
        (or another grayscale conversion) to a single-channel model.
    output : {"numpy", "torch"}, default="numpy"
        What ``transform`` returns. ``"torch"``: a float32 torch tensor on the
        device the model runs on (``device``; ONNX models: ``device`` or the
        CPU). With a torch model the activations never leave that device, so
        ``make_pipeline(LayerActivationExtractor(net, device="cuda",
        output="torch"), CoupledNMF(blocks=...))`` factorizes them on the GPU
        without a round trip through host memory (CoupledNMF follows tensor
        input to its device). Cannot be combined with
        ``set_output(transform="pandas")`` (or ``"polars"``, or the same
        ``sklearn.set_config(transform_output=...)``): fit and transform
        raise a ValueError.
    onnx_optimization : {"all", "extended", "basic", "disable"}, default="all"
        ONNX models only (ignored for torch models): onnxruntime's graph
        optimization level (``GraphOptimizationLevel.ORT_ENABLE_ALL``,
        ``ORT_ENABLE_EXTENDED``, ``ORT_ENABLE_BASIC``, ``ORT_DISABLE_ALL``).
        The requested layers are graph outputs, which onnxruntime's fusions
        keep, so the optimized graph gives the same values up to float32
        rounding (not bit-identical to ``"disable"``) while extracting
        about 1.3-1.5x faster on the CPU. Before an optimized session is used, it
        runs 4 samples of the first batch and 4 random ones next to the
        unoptimized graph; if a requested tensor differs by more than 1e-3
        of its largest magnitude (1e-2 on CUDA, 3e-2 for float16
        tensors), or the optimized graph fails to build or run, a
        ``RuntimeWarning`` says so and the graph runs unoptimized
        (``onnx_optimization_`` then reads ``"disable"``). ``"disable"``
        skips that check and its cost (one more session and two runs on 8
        samples when the session is built, in ``fit``).

    Attributes
    ----------
    layer_names_ : list of str
        Block names in column order, ``"input"`` first when included. Layer
        names are the requested names with ``"__"`` replaced by ``"_"``.
    layer_sources_ : dict
        Block name -> the layer it reads (module name or ONNX tensor name).
    block_sizes_ : list of (str, int)
        Block name and number of columns, in column order.
    layer_shapes_ : dict
        Block name -> per-sample shape of its features; ``prod(shape)`` is the
        block size (pooled conv layer: ``(C,)``; ``nonneg="split"`` adds a
        leading axis of 2: positive part, negative part).
    input_shape_ : tuple of int
        Shape of one sample as fed to the model, before the channel repeat
        of ``channel_repeat_``.
    channel_repeat_ : int
        How many times each input channel is repeated before the model sees
        it: the model's channel count with ``channel_repeat=True`` and
        single-channel images, else 1.
    n_features_in_ : int
        Number of values per input sample.
    n_features_out_ : int
        Number of output columns.
    onnx_optimization_ : str or None
        The graph optimization level the ONNX session runs at:
        ``onnx_optimization``, or ``"disable"`` when the optimized graph did
        not pass the check described there. None for torch models and when
        no layer is read.
    shifts_ : dict
        Only with ``nonneg="shift"``: block name -> float32 array subtracted
        from each feature (0 where the minimum seen in fit was >= 0).
    feature_names_in_ : ndarray of str
        Only when ``X`` in fit was a DataFrame whose column names are all
        strings (as scikit-learn records them); :meth:`transform` checks a
        DataFrame's names against them.

    Notes
    -----
    The model is a trained network, not a hyper-parameter: ``clone`` (and so
    ``GridSearchCV`` and ``cross_validate``) hands the same object to the
    copy instead of deep-copying it; passes over shared torch modules take turns,
    also from several threads. A fitted extractor pickles; onnxruntime
    sessions are rebuilt after unpickling, from the model as given (a file
    path is read again: pass the file's bytes to carry the model inside the
    pickle). scikit-learn's estimator checks
    pass for a network that accepts any input width (they feed arbitrary
    2-D data).

    See Also
    --------
    available_layers : list what ``layers`` accepts.
    sklearn_peek.CoupledNMF : factorizes the matrix this produces.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn_peek import LayerActivationExtractor
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(
    ...     torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
    ...     torch.nn.Flatten(), torch.nn.Linear(4 * 3 * 3, 5), torch.nn.ReLU())
    >>> X = np.random.default_rng(0).random((10, 64), dtype=np.float32)
    >>> ext = LayerActivationExtractor(net, input_shape=(1, 8, 8))
    >>> A = ext.fit_transform(X)
    >>> A.shape, A.dtype
    ((10, 105), dtype('float32'))
    >>> ext.block_sizes_
    [('input', 64), ('2', 36), ('5', 5)]
    >>> ext.get_feature_names_out()[[0, 64, 100]].tolist()
    ['input__p0', '2__c0_y0_x0', '5__u0']
    """

    _parameter_constraints: ClassVar[dict] = {
        "model": "no_validation",  # by the adapter that runs it
        "layers": "no_validation",  # against the model's layers
        "include_input": ["boolean"],
        "input_shape": "no_validation",  # _check_input_shape, with X
        "pooling": [StrOptions({"avg", "max"}), None],
        "nonneg": [StrOptions({"error", "relu", "split", "shift"})],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": "no_validation",  # resolve_device
        "progress": [None, "boolean"],
        "input_name": [None, str],
        "extra_inputs": [None, dict],
        "channel_repeat": ["boolean"],
        "output": [StrOptions({"numpy", "torch"})],
        # onnxruntime's graph optimization level (ONNX models only)
        "onnx_optimization": [StrOptions({"disable", "basic", "extended", "all"})],
    }

    def __init__(
        self,
        model,
        layers="auto",
        *,
        include_input=True,
        input_shape=None,
        pooling=None,
        nonneg="error",
        batch_size=256,
        device=None,
        progress=None,
        input_name=None,
        extra_inputs=None,
        channel_repeat=False,
        output="numpy",
        onnx_optimization="all",
    ):
        self.model = model
        self.layers = layers
        self.include_input = include_input
        self.input_shape = input_shape
        self.pooling = pooling
        self.nonneg = nonneg
        self.batch_size = batch_size
        self.device = device
        self.progress = progress
        self.input_name = input_name
        self.extra_inputs = extra_inputs
        self.channel_repeat = channel_repeat
        self.output = output
        self.onnx_optimization = onnx_optimization

    # -- scikit-learn plumbing -------------------------------------------------
    def __sklearn_clone__(self):
        # The model is a trained network, not a hyper-parameter: share it.
        params = self.get_params(deep=False)
        new = type(self)(
            **{
                k: (v if k == "model" else clone(v, safe=False))
                for k, v in params.items()
            }
        )
        if hasattr(self, "_sklearn_output_config"):
            new._sklearn_output_config = copy.deepcopy(self._sklearn_output_config)
        return new

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_adapter", None)  # onnxruntime sessions do not pickle
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = ["float32"]
        tags.requires_fit = True
        return tags

    # -- validation --------------------------------------------------------------
    def _validate_params(self):
        # the declared rules, then those between two parameters
        validate_params(self)
        self._check_output_container()
        if not self.include_input and isinstance(self.layers, (list, tuple)):
            if len(self.layers) == 0:
                raise ValueError(
                    "layers=[] with include_input=False leaves no features to "
                    "extract; expected at least one layer, or include_input=True."
                )

    def _check_output_container(self):
        """Refuse ``output="torch"`` under a pandas/polars ``set_output``.

        scikit-learn's ``set_output`` wraps ``transform`` and ``fit_transform``
        and converts what they return, so a tensor would silently come back as
        a DataFrame in host memory (or fail on a GPU tensor).
        """
        if self.output != "torch":
            return
        container, source = transform_output(self)
        if container != "default":
            raise ValueError(
                f"output='torch' cannot be combined with {source}: the "
                f"{container} container would replace the torch tensor with a "
                f"{container} DataFrame in host memory. Expected output='numpy' "
                f"to get a {container} DataFrame, or set_output(transform="
                "'default') to get the tensor on the model's device."
            )

    def _get_adapter(self):
        adapter = getattr(self, "_adapter", None)
        if adapter is not None and not _same(self._adapter_device, self.device):
            adapter = None  # device changed after fit: run there from now on
        if adapter is None:
            adapter = _make_adapter(
                self.model,
                self.device,
                self.input_name,
                self.extra_inputs,
                self.onnx_optimization,
            )
            self._adapter = adapter
            self._adapter_device = self.device
        return adapter

    def _check_unchanged(self):
        """Refuse to transform with parameters that changed since ``fit``.

        ``block_sizes_``, ``layer_shapes_``, ``shifts_`` and the model run
        were set by fit from these; a transform under other values would
        run the old network, or fail deep inside NumPy. ``batch_size``,
        ``progress``, ``output`` and ``device`` may change freely.
        """
        for name, was in getattr(self, "_fitted_with", {}).items():
            now = getattr(self, name)
            if not _same(now, was):
                raise ValueError(
                    f"{name}={_short(now)} differs from the value fit saw "
                    f"({_short(was)}): the fitted extractor (block_sizes_, "
                    "layer_shapes_, the model it runs) follows the parameters at "
                    "fit. Expected the same value, or call fit again."
                )

    def _sample_shape(self, X, adapter):
        """Reshape X to (n, *sample); return it, the sample shape and how.

        ``how`` is None (X as given or reshaped from flat rows), ``"added"``
        (X lacked the channel axis, which the model or ``input_shape``
        declares: added) or ``"tentative"`` (added because the torch model's
        first convolution takes one more axis than X's samples have; fit falls
        back to X as given when the model does not run on it, for modules that
        add the axis themselves).
        """
        shape = _check_input_shape(self.input_shape)
        n = X.shape[0]
        if shape is not None:
            # input_shape (H, W) for a model taking (C, H, W) images reads as
            # (1, H, W), as X given without the channel axis does below
            how = _channel_axis_rule(shape, adapter, self.channel_repeat)
            full = shape if how is None else (1, *shape)
            X4 = _to_sample_shape(X, full)
            if X4 is None:
                raise ValueError(
                    f"X has shape {X.shape}, which does not fit input_shape={shape}: "
                    f"expected {_accepted_shapes(full)}."
                )
            if how is None and X.ndim == len(shape) > 2:
                how = "added"  # (n, H, W) for input_shape (1, H, W)
            return X4, full, how
        if X.ndim > 2:
            how = _channel_axis_rule(X.shape[1:], adapter, self.channel_repeat)
            if how is not None:  # (n, H, W) for a model taking (n, C, H, W)
                return X[:, None], (1, *X.shape[1:]), how
            return X, tuple(X.shape[1:]), None
        model_shape = adapter.model_input_shape()
        if model_shape is not None:
            if math.prod(model_shape) != X.shape[1]:
                raise ValueError(
                    f"X has {X.shape[1]} features per sample, but the model input "
                    f"has shape {model_shape} ({math.prod(model_shape)} values); "
                    "pass X with matching size or input_shape=..."
                )
            return X.reshape(n, *model_shape), model_shape, None
        return X, (X.shape[1],), None

    # -- fit / transform -----------------------------------------------------------
    def fit(self, X, y=None):
        """Check the model and the data, and record the layer shapes.

        Runs the model on the first batch (all of ``X`` with
        ``nonneg="shift"``, to record the per-feature minima).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_samples, C, H, W) \
                or (n_samples, H, W)
            Images. A DataFrame or a torch tensor is accepted too. Values are
            fed to the model as they are: integer images (uint8 0-255) are
            not divided by 255, and a ``UserWarning`` says so when an integer
            ``X`` holds values above 1 (unless the ONNX model's input is of an
            integer type).
        y : None
            Ignored.

        Returns
        -------
        self : LayerActivationExtractor
            The fitted extractor.
        """
        self._fit(X)
        return self

    def fit_transform(self, X, y=None):
        """Fit to ``X`` and return its activations, as ``fit(X).transform(X)``.

        ``X`` is read, checked (and the integer warning issued) once, not once
        by ``fit`` and again by ``transform``; the first batch, which ``fit``
        already checked and ran through the model, is not run again.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_samples, C, H, W) \
                or (n_samples, H, W)
            Images, as in :meth:`fit`.
        y : None
            Ignored.

        Returns
        -------
        A : ndarray or torch.Tensor of shape (n_samples, ``n_features_out_``), float32
            As :meth:`transform` returns.
        """
        X4, seen = self._fit(X)
        return self._transform_checked(X4, None, seen)

    def _fit(self, X):
        """fit; returns X as fed (``(n, *input_shape_)``, float32) and what
        fit learnt of it: ``(rows checked for NaN, input minimum or None,
        raw activations)``, the last two of the first batch."""
        self._validate_params()
        # a fit that fails leaves an unfitted extractor, not one half refitted
        for name in ("_adapter", "feature_names_in_", "shifts_", "block_sizes_"):
            self.__dict__.pop(name, None)
        names = string_feature_names(X)
        if names is not None:
            self.feature_names_in_ = names
        adapter = self._get_adapter()
        arr = _as_array(X, warn_integers=not self._model_takes_integers(adapter))
        adapter.check_values(arr)
        X4, sample_shape, how = self._sample_shape(arr, adapter)
        feed_shape, repeat = _feed_shape(
            sample_shape, adapter, self.channel_repeat, no_axis=how is not None
        )
        if adapter.kind == "onnx":
            adapter.check_sample_shape(feed_shape)
        if not (isinstance(self.layers, (list, tuple)) and len(self.layers) == 0):
            try:
                rows = adapter.list_layers(feed_shape)
            except ValueError as exc:
                if how != "tentative":
                    raise
                # A module that adds the channel axis itself: X as given
                # (shaped by input_shape when there is one).
                given = _check_input_shape(self.input_shape)
                X4 = arr if given is None else _to_sample_shape(arr, given)
                if X4 is None:  # (n, 1, H, W) under input_shape (H, W)
                    raise exc
                rows = self._list_layers_as_given(adapter, X4, exc)
                sample_shape = tuple(X4.shape[1:])
                feed_shape, repeat = sample_shape, 1
            pairs = _resolve_layers(adapter, self.layers, rows)
        else:
            pairs = []
        self.channel_repeat_ = int(repeat)
        sources = [c for _, c in pairs]
        self.input_shape_ = tuple(int(d) for d in sample_shape)
        self.n_features_in_ = int(math.prod(sample_shape))
        self._sources = sources

        # Block names: unique, without "__", "input" kept for the pixels.
        names, taken = [], {"input"} if self.include_input else set()
        for requested, _ in pairs:
            base = _block_name(requested) or "layer"
            name, k = base, 1
            while name in taken:
                name, k = f"{base}_{k}", k + 1
            taken.add(name)
            names.append(name)
        self._layer_block_names = names

        probe = np.ascontiguousarray(X4[: min(len(X4), self.batch_size)], np.float32)
        xmin = _check_finite(probe, "X", 0, self._need_input_min())
        with self._runner() as run:
            raw = run(self._feed(probe))
        self.onnx_optimization_ = (
            adapter.optimization_used.get(tuple(sources))
            if adapter.kind == "onnx"
            else None
        )
        shapes = {}
        if self.include_input:
            shapes["input"] = self.input_shape_
        for name, src in zip(names, sources):
            arr_l = raw[src]
            if arr_l.ndim == 0 or arr_l.shape[0] != len(probe):
                raise ValueError(
                    f"layer {src!r} gave an output of shape {tuple(arr_l.shape)} "
                    f"for a batch of {len(probe)} samples; expected the samples "
                    f"on its first axis ({len(probe)}, ...). A layer that puts them "
                    "elsewhere (a sequence layer with batch_first=False) or "
                    "reduces over them has no per-sample features to read: "
                    "choose another layer."
                )
            shapes[name] = tuple(int(d) for d in arr_l.shape[1:])
        self._raw_shapes = shapes
        self.layer_names_ = (["input"] if self.include_input else []) + names
        self.layer_sources_ = dict(
            ([("input", "input")] if self.include_input else [])
            + list(zip(names, sources))
        )
        self.layer_shapes_ = {}
        for name in self.layer_names_:
            shape = shapes[name]
            pooled = self.pooling is not None and poolable(name, shape)
            if pooled:
                shape = (shape[0],)
            if self.nonneg == "split":
                shape = (2, *shape)
            self.layer_shapes_[name] = shape
        self.block_sizes_ = [
            (n, int(math.prod(self.layer_shapes_[n]))) for n in self.layer_names_
        ]
        self.n_features_out_ = int(sum(s for _, s in self.block_sizes_))

        checked = len(probe)
        if self.nonneg == "shift":
            self.shifts_ = self._fit_shifts(X4, (xmin, raw))
            checked = len(X4)
        elif self.nonneg == "error":
            self._postprocess(self._pooled(probe, raw), check_rows=0, input_min=xmin)
        # copies of lists and arrays: one changed in place after fit differs
        self._fitted_with = {
            k: (v.copy() if isinstance(v, (list, np.ndarray)) else v)
            for k, v in ((k, getattr(self, k)) for k in _LAYOUT_PARAMS)
        }
        return X4, (checked, xmin, raw)

    @staticmethod
    def _list_layers_as_given(adapter, arr, error):
        """Layer rows for samples of X's own shape, or ``error`` raised when
        the model does not run on those either."""
        try:
            return adapter.list_layers(tuple(arr.shape[1:]))
        except ValueError:
            pass
        raise error

    @staticmethod
    def _model_takes_integers(adapter):
        """True for an ONNX model whose image input has an integer type."""
        dtype = getattr(adapter, "input_dtype", None)
        return dtype is not None and np.dtype(dtype).kind in "iub"

    def _runner(self):
        """Context yielding run(batch) -> {source: raw activations}.

        The torch adapter sets eval mode and hooks up once for all batches run
        inside, and undoes both on exit, also after an exception.
        """
        if not self._sources:
            return contextlib.nullcontext(lambda batch: {})
        return self._get_adapter().runner(self._sources)

    def _feed(self, batch):
        if self.channel_repeat_ > 1:
            return np.repeat(batch, self.channel_repeat_, axis=1)
        return batch

    def _need_input_min(self):
        """The input's minimum is needed only for its own block under "error"."""
        return self.include_input and self.nonneg == "error"

    def _process(self, run, X4, start, device=None, done=None, checked=False):
        """Run one batch starting at row ``start``; blocks after the policy.

        With a torch ``device`` the blocks are float32 tensors there (the
        torch adapter then already returns its activations on the device).
        ``done``: ``(input minimum, raw activations)`` of this very batch,
        already checked for NaN and run by ``fit`` (its first batch).
        ``checked``: fit has checked this batch for NaN already.
        """
        batch = np.ascontiguousarray(X4[start : start + self.batch_size], np.float32)
        if done is not None:
            xmin, raw = done
        else:
            xmin = None
            if not checked:
                xmin = _check_finite(batch, "X", start, self._need_input_min())
            raw = run(self._feed(batch))
        if device is not None:
            if self.include_input:  # the only block made from the batch itself
                batch = _tensor_like(batch, device)
            raw = {
                k: v if is_torch_tensor(v) else _tensor_like(v, device)
                for k, v in raw.items()
            }
        return self._postprocess(
            self._pooled(batch, raw), check_rows=start, input_min=xmin
        )

    def _output_device(self):
        """Where ``output="torch"`` puts the result: the model's device."""
        adapter = self._get_adapter()
        if adapter.kind == "torch":
            return adapter.device
        import torch

        dev = resolve_device(self.device)
        return dev if dev is not None else torch.device("cpu")

    def _pooled(self, batch, raw):
        """{block: (B, n_raw_features)} before the nonneg policy."""
        out = {}
        n = batch.shape[0]
        if self.include_input:
            out["input"] = batch.reshape(n, -1)
        for name, src in zip(self._layer_block_names, self._sources):
            a = raw[src]
            if self.pooling is not None and a.ndim >= 3:
                axes = tuple(range(2, a.ndim))
                if is_torch_tensor(a):
                    a = a.mean(dim=axes) if self.pooling == "avg" else a.amax(dim=axes)
                else:
                    a = a.mean(axis=axes) if self.pooling == "avg" else a.max(axis=axes)
            out[name] = a.reshape(n, -1)
        return out

    def _postprocess(self, blocks, check_rows, input_min=None):
        """Apply the nonneg policy; return {block: (B, block_size)}.

        ``input_min``: the input's minimum when the caller has it already.
        """
        out = {}
        for name, a in blocks.items():
            if name == "input":  # checked before the forward pass
                if self.nonneg != "error":
                    amin = 0.0
                elif input_min is not None:
                    amin = input_min
                else:
                    amin = float(a.min())
            else:
                # the minimum is needed only to refuse negative values
                amin = _check_finite(
                    a,
                    f"layer {self.layer_sources_[name]!r}",
                    check_rows,
                    need_min=self.nonneg == "error",
                )
            if self.nonneg == "error":
                if amin < 0:
                    what = (
                        "the input X"
                        if name == "input"
                        else f"layer {self.layer_sources_[name]!r} (block {name!r})"
                    )
                    raise NegativeActivationError(
                        what,
                        amin,
                        f"nonneg='error': {what} has negative values (min {amin:.4g}), "
                        "but the coupled factorization needs non-negative data. Pass "
                        "nonneg='relu' (clip at 0), 'split' ([relu(x), relu(-x)]) or "
                        "'shift' (subtract the per-feature minimum seen in fit), or "
                        "pick a layer after a ReLU (see available_layers(model)).",
                    )
                out[name] = a
            elif self.nonneg == "relu":
                out[name] = _relu(a)
            elif self.nonneg == "split":
                out[name] = _concat_cols([_relu(a), _relu(-a)])
            else:
                shift = getattr(self, "shifts_", None)
                if shift is None:  # during fit, before the shifts exist
                    out[name] = a
                    continue
                s = shift[name]
                if is_torch_tensor(a):
                    s = _tensor_like(s, a)
                b = a - s
                tol = 1e-5 * (1.0 + abs(s))
                below = b < -tol
                if below.any():
                    r, c = (int(v) for v in (below.nonzero() if is_torch_tensor(below)
                                             else np.argwhere(below))[0])  # fmt: skip
                    what = (
                        "X"
                        if name == "input"
                        else f"layer {self.layer_sources_[name]!r}"
                    )
                    raise ValueError(
                        f"nonneg='shift': {what} (block {name!r}) has value "
                        f"{a[r, c]:.4g} at sample {r + check_rows}, feature {c}, below "
                        f"the minimum {s[c]:.4g} seen in fit. Refit on data that "
                        "covers this range, or use nonneg='relu' or 'split'."
                    )
                out[name] = _relu(b)  # only float32 rounding is cut here
        return out

    def _fit_shifts(self, X4, first):
        """Per-feature minima (clipped at 0) over all of ``X4``; ``first``:
        fit's ``(input minimum, raw activations)`` of the first batch."""
        mins = None
        # a whole pass over X, as long as transform's: it gets a bar too
        bar = progress_bar(
            self.progress,
            total=-(-len(X4) // self.batch_size),
            desc="fit shifts",
            unit="batch",
        )
        with self._runner() as run:
            for i in ticking(range(0, len(X4), self.batch_size), bar):
                blocks = self._process(run, X4, i, done=first if i == 0 else None)
                bmin = {k: v.min(axis=0) for k, v in blocks.items()}
                mins = (
                    bmin
                    if mins is None
                    else {k: np.minimum(mins[k], v) for k, v in bmin.items()}
                )
        return {k: np.minimum(v, 0).astype(np.float32) for k, v in mins.items()}

    def _check_X(self, X):
        adapter = self._get_adapter()
        arr = _as_array(X, warn_integers=not self._model_takes_integers(adapter))
        adapter.check_values(arr)
        fitted_names = hasattr(self, "feature_names_in_")
        names = string_feature_names(X)
        has_names = names is not None
        if fitted_names != has_names:  # as scikit-learn's estimators warn
            warnings.warn(
                "X does not have valid feature names, but LayerActivationExtractor "
                "was fitted with feature names"
                if fitted_names
                else "X has feature names, but LayerActivationExtractor was fitted "
                "without feature names",
                UserWarning,
                stacklevel=3,
            )
        if fitted_names and has_names:
            if len(names) != len(self.feature_names_in_) or not np.all(
                names == self.feature_names_in_
            ):
                raise ValueError(
                    "X has different column names from the DataFrame seen in fit; "
                    f"expected {list(self.feature_names_in_[:3])}..."
                )
        shape = self.input_shape_
        X4 = _to_sample_shape(arr, shape)
        if X4 is not None:
            return X4
        if arr.ndim == 2:
            raise ValueError(
                f"X has {arr.shape[1]} features, but LayerActivationExtractor is "
                f"expecting {self.n_features_in_} features as input (samples of "
                f"shape {shape}, seen in fit)."
            )
        raise ValueError(
            f"X has shape {arr.shape}; this extractor was fitted on samples of shape "
            f"{shape}: expected {_accepted_shapes(shape)}."
        )

    def transform(self, X, out=None):
        """Run the model and return ``[input | layer_1 | ...]`` as float32.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_samples, C, H, W) \
                or (n_samples, H, W)
            Images with the per-sample shape seen in fit (without the channel
            axis when that holds one channel), unscaled as in :meth:`fit`.
        out : ndarray or numpy.memmap of shape (n_samples, ``n_features_out_``), \
                default=None
            float32 array to write into (e.g. a ``np.memmap`` for data larger
            than memory). When None, a new array is allocated after checking
            that it fits in memory.

        Returns
        -------
        A : ndarray or torch.Tensor of shape (n_samples, ``n_features_out_``), float32
            The activations (``out`` itself when given); a tensor on the
            model's device with ``output="torch"``.

        Raises
        ------
        ValueError
            If ``X`` does not fit the per-sample shape seen in fit, holds NaN
            or infinite values, or (under ``nonneg="error"``) negative
            activations; or if a parameter that shaped the fitted extractor
            (``model``, ``layers``, ``pooling``, ``nonneg``, ...) was set to
            another value after fit (call fit again).
        """
        check_is_fitted(self, "block_sizes_")
        self._validate_params()
        self._check_unchanged()
        return self._transform_checked(self._check_X(X), out)

    def _transform_checked(self, X4, out, seen=None):
        """transform of ``X4`` as fed to the model (checked by ``_check_X``
        or ``_fit``); ``seen`` as in ``_fill``."""
        n, n_out = X4.shape[0], self.n_features_out_
        if self.output == "torch":
            return self._transform_torch(X4, out, seen)
        if out is None:
            _check_memory(
                n,
                n_out,
                _available_memory(),
                "available",
                "pooling='avg' or 'max' (one feature per channel), fewer or smaller "
                "layers, fewer samples, or transform(X, out=np.memmap(path, "
                f"dtype='float32', mode='w+', shape=({n}, {n_out})))",
            )
            out = np.empty((n, n_out), dtype=np.float32)
        elif (
            not isinstance(out, np.ndarray)
            or out.dtype != np.float32
            or out.shape != (n, n_out)
        ):
            got = (
                f"{type(out).__name__} {getattr(out, 'dtype', '?')} "
                f"{getattr(out, 'shape', '?')}"
            )
            raise ValueError(
                f"out={got} does not fit; expected a float32 ndarray or np.memmap "
                f"of shape ({n}, {n_out})."
            )
        return self._fill(out, X4, seen=seen)

    def _transform_torch(self, X4, out, seen=None):
        """transform for ``output="torch"``: fill a float32 tensor on the device."""
        import torch

        if out is not None:
            raise ValueError(
                "out= is a NumPy buffer, but output='torch' returns a tensor on the "
                "model's device; expected out=None (or output='numpy')."
            )
        dev = self._output_device()
        n, n_out = X4.shape[0], self.n_features_out_
        if dev.type == "cuda":
            avail, where = device_free_memory(dev), f"free GPU {dev}"
        else:
            avail, where = _available_memory(), "free host"
        _check_memory(
            n,
            n_out,
            avail,
            where,
            "pooling='avg' or 'max', fewer or smaller layers, fewer samples, or "
            "output='numpy' (host memory, or out=np.memmap(...))",
        )
        out = torch.empty((n, n_out), dtype=torch.float32, device=dev)
        adapter = self._get_adapter()
        keep = getattr(adapter, "keep_on_device", None)
        try:
            if keep is not None:
                adapter.keep_on_device = True
            return self._fill(out, X4, device=dev, seen=seen)
        finally:
            if keep is not None:
                adapter.keep_on_device = keep

    def _fill(self, out, X4, device=None, seen=None):
        """Run the batches of ``X4`` and copy their blocks into ``out``.

        ``seen`` (fit_transform): what fit returned, ``(rows checked for NaN,
        input minimum, raw activations of the first batch)``; those rows are
        not checked again, nor the first batch run again.
        """
        checked, first = 0, None
        if seen is not None:
            checked, first = seen[0], seen[1:]
        cols, lo = {}, 0
        for name, size in self.block_sizes_:
            cols[name] = slice(lo, lo + size)
            lo += size
        n, bs = X4.shape[0], self.batch_size
        bar = progress_bar(
            self.progress, total=-(-n // bs), desc="extract", unit="batch"
        )
        with self._runner() as run:
            for i in ticking(range(0, n, bs), bar):
                rows = slice(i, min(n, i + bs))
                done = first if i == 0 else None
                blocks = self._process(
                    run, X4, i, device, done, checked=min(n, i + bs) <= checked
                )
                for name, a in blocks.items():
                    out[rows, cols[name]] = a
        return out

    def get_feature_names_out(self, input_features=None):
        """Column names ``<block>__<feature>``.

        ``input__p<i>`` for pixel ``i`` (flat C*H*W index),
        ``<layer>__c<c>_y<y>_x<x>`` for conv maps, ``<layer>__c<c>`` after
        pooling, ``<layer>__u<i>`` for flat layers; ``_pos`` / ``_neg`` are
        appended with ``nonneg="split"``.

        Parameters
        ----------
        input_features : array-like of str, default=None
            Ignored apart from a length check (the names come from the layers).

        Returns
        -------
        feature_names_out : ndarray of str objects
        """
        check_is_fitted(self, "block_sizes_")
        self._check_unchanged()  # the names transform would give
        if input_features is not None and len(input_features) != self.n_features_in_:
            raise ValueError(
                f"input_features has {len(input_features)} names; expected "
                f"{self.n_features_in_}."
            )
        names = []
        for name in self.layer_names_:
            raw = self._raw_shapes[name]
            if name == "input":
                sub = [f"p{i}" for i in range(math.prod(raw))]
            else:
                pooled = self.pooling is not None and poolable(name, raw)
                sub = _feature_suffixes((raw[0],) if pooled else raw, pooled)
            if self.nonneg == "split":
                sub = [f"{s}_pos" for s in sub] + [f"{s}_neg" for s in sub]
            names.extend(f"{name}__{s}" for s in sub)
        return np.asarray(names, dtype=object)
