"""ONNX adapter: expose intermediate tensors as graph outputs, run onnxruntime.

Layers are named by tensor name (``/features/features.1/Relu_output_0``,
``relu1``); a node name is accepted as an alias for the node's first output.
The requested tensors become graph outputs, which onnxruntime's graph
optimizations keep; an optimized session is used only after it reproduced
the unoptimized graph's values on a few samples (else the adapter warns and
runs unoptimized). The model the caller passed is never modified: the
adapter works on a copy.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import math
import os
import warnings
import zipfile

import numpy as np

from .._backend import resolve_device, version_at_least

NONNEG_OPS = frozenset({"Relu", "Sigmoid", "Softplus", "HardSigmoid"})
POOL_OPS = frozenset(
    {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool"}
)
#: Reductions torch's dynamo exporter writes for global pooling
#: (AdaptiveAvgPool2d(1) -> ReduceMean over the spatial axes): a summary of
#: the map they read only when they keep the batch and channel axes.
SPATIAL_REDUCE_OPS = frozenset({"ReduceMean", "ReduceMax"})
#: Ops that ONNX defines on channels-first data: their first input is
#: ``(N, C, ...)``. An image input that reaches one of them proves its layout.
CHANNELS_FIRST_OPS = frozenset(
    {
        "Conv",
        "ConvInteger",
        "ConvTranspose",
        "QLinearConv",
        "BatchNormalization",
        "InstanceNormalization",
        "LRN",
        *POOL_OPS,
        "GlobalLpPool",
    }
)
#: Elementwise ops (casts, normalization arithmetic, activations) whose output
#: has its input's layout: the search for the layout walks through them.
LAYOUT_KEEPING_OPS = frozenset(
    {
        "Identity",
        "Cast",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Neg",
        "Relu",
        "LeakyRelu",
        "Clip",
        "Sigmoid",
        "Dropout",
        "QuantizeLinear",
        "DequantizeLinear",
    }
)
#: Without such evidence a 4-D input ``(N, d1, d2, d3)`` counts as
#: channels-first when ``d1`` is at most this (gray, gray + alpha, RGB, RGBA)
#: and ``d3`` is dynamic or larger: an image side of 4 pixels or fewer is
#: taken as the channel axis of a channels-last input.
MAX_GUESSED_CHANNELS = 4
_FLOAT_TYPES = None
#: onnx_optimization value -> name of the onnxruntime.GraphOptimizationLevel.
OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
#: Samples of the first batch (plus as many random ones) on which an
#: optimized session must reproduce the unoptimized graph.
VERIFY_SAMPLES = 8
#: How long (microseconds) onnxruntime's idle worker threads spin before they
#: sleep, where onnxruntime can bound it (see _spin_config).
SPIN_US = 200


def _spin_config(version):
    """Session config entries for onnxruntime's idle worker threads.

    Spinning between operators saves a wake-up per operator (about 10% of
    a small CNN's forward pass on 2 cores), but threads that spin on after
    a run compete with torch, BLAS and other sessions in the process (they
    made a NumPy matrix product right after a run 2x slower). From
    onnxruntime 1.27 the spin can be bounded: ``SPIN_US`` covers the gaps
    between operators and between batches, then the threads sleep. Older
    versions spin for a time that cannot be set, so spinning stays off there.
    """
    if version_at_least(version, (1, 27)):
        return {
            "session.intra_op.allow_spinning": "1",
            "session.intra_op.spin_duration_us": str(SPIN_US),
        }
    return {"session.intra_op.allow_spinning": "0"}


@functools.cache
def newest_opset(limit):
    """Newest default-domain opset ``<= limit`` that onnx and onnxruntime load.

    Each release of onnxruntime refuses models stamped with an opset newer
    than it knows ("only *guarantees* support for ... opset 19"), and the
    onnx package's shape inference knows the opsets up to its own release.
    So a file that a recent exporter writes at its default opset can fail
    with older onnx or onnxruntime. This asks both: the onnx package's
    newest opset, and a one-node model loaded by onnxruntime, from ``limit``
    down. Raises ``RuntimeError`` when no opset from 7 to ``limit`` loads.
    """
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    top = min(int(limit), onnx.defs.onnx_opset_version())
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "opset_probe",
        [vi("x", TensorProto.FLOAT, [1])],
        [vi("y", TensorProto.FLOAT, [1])],
    )
    for opset in range(top, 6, -1):
        # IR version 7 is older than any onnxruntime this package supports,
        # so only the opset can make the probe fail.
        probe = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7
        )
        try:
            ort.InferenceSession(
                probe.SerializeToString(), providers=["CPUExecutionProvider"]
            )
        except Exception:
            continue
        return opset
    raise RuntimeError(
        f"onnxruntime {ort.__version__} (with onnx {onnx.__version__}) loads no "
        f"model of opset 7 to {limit}."
    )


def torch_export_opset():
    """Opset for ``torch.onnx.export``: torch's default, capped by onnx and ORT.

    torch stamps its newest default opset on what it exports (20 with torch
    2.13), which onnxruntime 1.16 and onnx 1.14 refuse; exporting at the
    newest opset all three share keeps the file loadable here.
    """
    try:
        from torch.onnx._constants import ONNX_DEFAULT_OPSET as default
    except ImportError:  # pragma: no cover - torch moved its private constant
        default = 17
    return newest_opset(default)


def torch_export_options():
    """Keywords for ``torch.onnx.export``: the TorchScript exporter, a safe opset.

    ``dynamo=False`` keeps the TorchScript-based exporter, which torch 2.9
    and later no longer pick by default (the dynamo exporter needs
    onnxscript and names tensors differently); older torch (2.2, for one)
    has only that exporter and no ``dynamo`` argument, so it is passed only
    where it exists. The opset is :func:`torch_export_opset`'s.
    """
    import inspect

    import torch

    options = {"opset_version": torch_export_opset()}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        options["dynamo"] = False
    return options


def _float_types():
    global _FLOAT_TYPES
    if _FLOAT_TYPES is None:
        from onnx import TensorProto

        _FLOAT_TYPES = {
            TensorProto.FLOAT,
            TensorProto.DOUBLE,
            TensorProto.FLOAT16,
            TensorProto.BFLOAT16,
        }
    return _FLOAT_TYPES


def is_onnx_model(model):
    if isinstance(model, (str, os.PathLike, bytes, bytearray, memoryview)):
        return True
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is a hard dependency
        return False
    return isinstance(model, onnx.ModelProto)


def load_model(model, *, subject=None):
    """Return ``(ModelProto copy, description)``; clear errors for bad files.

    ``subject``: how the messages name a model file (the CLI's ``MODEL
    'path'``); by default the argument, ``model='path'``.
    """
    import onnx

    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        source = "<ModelProto>"
    elif isinstance(model, (bytes, bytearray, memoryview)):
        source = f"<{len(model)} bytes>"
        try:
            proto = onnx.load_from_string(bytes(model))
        except Exception as exc:
            raise ValueError(
                f"model={source} could not be parsed as an ONNX model "
                f"(truncated or not ONNX): {type(exc).__name__}: {exc}"
            ) from exc
    else:
        path = os.fspath(model)
        source = repr(path)
        name = f"model={path!r}" if subject is None else subject
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{name}: no such file. Expected a torch.nn.Module, or an "
                "ONNX model as a file path, bytes or onnx.ModelProto."
            )
        if os.path.isdir(path):
            raise ValueError(f"{name} is a directory, not an ONNX file.")
        try:
            # Loads weights stored as external data from the model's folder.
            proto = onnx.load(path)
        except Exception as exc:
            hint = ""
            if zipfile.is_zipfile(path) or path.lower().endswith((".pt", ".pth")):
                hint = (
                    " It looks like a torch file (torch.save or TorchScript): "
                    "load the network in Python and pass the nn.Module itself "
                    "(a TorchScript file: export it to ONNX, or give it to the "
                    "sklearn-peek command, which does)."
                )
            raise ValueError(
                f"{name} could not be read as an ONNX model (truncated, "
                "corrupt, not ONNX, or its external data files are missing): "
                f"{type(exc).__name__}: {exc}.{hint}"
            ) from exc
    if source.startswith("<"):
        external = [
            t.name
            for t in proto.graph.initializer
            if t.data_location == onnx.TensorProto.EXTERNAL
        ]
        if external:
            raise ValueError(
                f"model={source} refers to weights in external data files "
                f"(initializers {external[:3]}...) that an in-memory model cannot "
                "locate; pass the .onnx file path instead, or load the data first "
                "with onnx.load_external_data_for_model(model, base_dir)."
            )
    if proto.ir_version <= 0 or len(proto.graph.node) == 0:
        name = f"model={source}" if subject is None else subject
        raise ValueError(
            f"{name} is not an ONNX model: it parsed without an IR version "
            f"or without any graph nodes (ir_version={proto.ir_version}, "
            f"{len(proto.graph.node)} nodes)."
        )
    return proto, source


def _dims(type_proto):
    """Shape of a tensor type as a list of int / str / None, or None if unknown."""
    t = type_proto.tensor_type
    if not t.HasField("shape"):
        return None
    dims = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


class OnnxAdapter:
    """Run an ONNX model with onnxruntime and return named tensors."""

    kind = "onnx"

    def __init__(
        self,
        model,
        device=None,
        *,
        input_name=None,
        extra_inputs=None,
        param="device",
        optimization="disable",
    ):
        import onnx
        import onnxruntime as ort

        if optimization not in OPTIMIZATION_LEVELS:  # the estimator checks first
            raise ValueError(
                f"onnx_optimization={optimization!r} is not understood; expected "
                f"one of {tuple(OPTIMIZATION_LEVELS)}."
            )
        self.onnx = onnx
        self.ort = ort
        self.optimization = optimization
        self.proto, self.source = load_model(model)
        dev = resolve_device(device, param=param)
        self.providers = ["CPUExecutionProvider"]
        self.on_cuda = False
        if dev is not None and dev.type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                self.on_cuda = True
                self.providers = [
                    ("CUDAExecutionProvider", {"device_id": dev.index or 0}),
                    "CPUExecutionProvider",
                ]
            else:
                warnings.warn(
                    f"{param}={device!r}: onnxruntime has no CUDAExecutionProvider "
                    "(install onnxruntime-gpu); the ONNX model runs on the CPU.",
                    RuntimeWarning,
                    stacklevel=3,
                )
        self.inferred = _infer_shapes(onnx, self.proto)
        g = self.inferred.graph
        init_names = {t.name for t in g.initializer}
        # Old exporters list initializers as graph inputs too: not real inputs.
        self.inputs = [vi for vi in g.input if vi.name not in init_names]
        self._types = {}
        #: tensors typed as something other than a tensor (skl2onnx's ZipMap
        #: gives a sequence of maps): no layers, nothing to type by a run
        self._not_tensors = set()
        for vi in [*g.input, *g.value_info, *g.output]:
            if vi.type.HasField("tensor_type"):
                self._types[vi.name] = (vi.type.tensor_type.elem_type, _dims(vi.type))
            elif vi.type.WhichOneof("value") is not None:
                self._not_tensors.add(vi.name)
        self.nodes = list(g.node)
        self.alias = {}
        self.producer = {}
        for node in self.nodes:
            for out in node.output:
                if out:
                    self.producer[out] = node
            if node.name and node.output and node.output[0]:
                self.alias.setdefault(node.name, node.output[0])
        self.constants = _constant_tensors(onnx, g, init_names)
        self._choose_inputs(input_name, extra_inputs)
        self._sessions = {}
        #: outputs -> the optimization level their session runs at
        self.optimization_used = {}

    # -- inputs ---------------------------------------------------------------
    def _choose_inputs(self, input_name, extra_inputs):
        names = [vi.name for vi in self.inputs]
        if not names:
            raise ValueError(f"the ONNX model {self.source} has no graph inputs.")
        if input_name is None:
            if len(names) > 1:
                raise ValueError(
                    f"the ONNX model {self.source} has several inputs {names}; pass "
                    "input_name=<the image input> and extra_inputs={name: value} "
                    "for the others."
                )
            input_name = names[0]
        elif input_name not in names:
            raise ValueError(
                f"input_name={input_name!r} is not an input of the ONNX model "
                f"{self.source}; its inputs are {names}."
            )
        self.input_name = input_name
        vi = next(v for v in self.inputs if v.name == input_name)
        elem = vi.type.tensor_type.elem_type
        self.input_dtype = self.onnx.helper.tensor_dtype_to_np_dtype(elem)
        self.input_dims = _dims(vi.type)
        extra = dict(extra_inputs or {})
        unknown = sorted(set(extra) - set(names) - {input_name})
        if unknown:
            raise ValueError(
                f"extra_inputs names {unknown} are not inputs of the ONNX model "
                f"{self.source}; its inputs are {names}."
            )
        if input_name in extra:
            raise ValueError(
                f"extra_inputs gives a value for {input_name!r}, which is the image "
                "input (input_name); X feeds it."
            )
        missing = [n for n in names if n != input_name and n not in extra]
        if missing:
            raise ValueError(
                f"the ONNX model {self.source} has inputs {missing} besides the image "
                f"input {input_name!r}; give their values with "
                "extra_inputs={name: array} (one sample's value; it is repeated "
                "along the batch axis)."
            )
        self.extra = {}
        for vi in self.inputs:
            if vi.name == input_name:
                continue
            dt = self.onnx.helper.tensor_dtype_to_np_dtype(
                vi.type.tensor_type.elem_type
            )
            try:
                value = np.asarray(extra[vi.name], dtype=dt)
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"extra_inputs[{vi.name!r}]={extra[vi.name]!r} cannot be read as "
                    f"the model input's {np.dtype(dt).name} values ({exc}); "
                    "expected numbers (one sample's value)."
                ) from None
            dims = _dims(vi.type)
            batched = dims is not None and len(dims) == value.ndim + 1
            batch_dim = self.input_dims[0] if self.input_dims else None
            if (
                not batched
                and dims
                and isinstance(batch_dim, str)
                and dims[0] == batch_dim
            ):
                raise ValueError(
                    f"extra_inputs[{vi.name!r}] has shape {value.shape}, but the "
                    f"input {vi.name!r} takes {_show(dims)}, whose first axis is "
                    f"the batch axis of {input_name!r}; expected one sample's "
                    f"value, of shape {_show(dims[1:])} (it is repeated along "
                    "the batch axis)."
                )
            self.extra[vi.name] = (value, batched)

    def model_input_shape(self):
        """Per-sample input shape when the model fixes every non-batch dim."""
        dims = self.input_dims
        if dims is None or len(dims) < 2:
            return None
        rest = dims[1:]
        if all(isinstance(d, int) and d > 0 for d in rest):
            return tuple(rest)
        return None

    def _layout_evidence(self):
        """What the graph says about the image input's layout.

        Walks from the input through layout-keeping elementwise ops
        (``LAYOUT_KEEPING_OPS``: Cast, the Sub / Div of a normalization,
        activations). False when a Transpose comes first on some path (the
        model rearranges its axes itself, as tf2onnx's channels-last exports
        do), True when an op defined on channels-first data does
        (``CHANNELS_FIRST_OPS``: Conv, BatchNormalization, pooling), None when
        neither is reached.
        """
        consumers = {}
        for node in self.nodes:
            for i, t in enumerate(node.input):
                consumers.setdefault(t, []).append((node, i))
        frontier, seen, found = [self.input_name], set(), False
        while frontier and len(seen) < 64:
            t = frontier.pop()
            if t in seen:
                continue
            seen.add(t)
            for node, i in consumers.get(t, []):
                op = node.op_type
                if op == "Transpose":
                    return False
                if op in CHANNELS_FIRST_OPS and i == 0:
                    found = True
                elif op in LAYOUT_KEEPING_OPS:
                    frontier.extend(o for o in node.output if o)
        return True if found else None

    def channels_first(self):
        """True when the image input is clearly ``(N, C, ...)``.

        The graph decides when it can (``_layout_evidence``). Otherwise only a
        4-D input ``(N, d1, d2, d3)`` with a static ``d1 <=
        MAX_GUESSED_CHANNELS`` and a ``d3`` that is dynamic or larger counts
        as channels-first; ``(N, 8, 8, 1)`` or ``(N, 28, 28, 3)`` (channels
        last), and anything else unclear, does not.
        """
        if not hasattr(self, "_channels_first"):
            verdict = self._layout_evidence()
            if verdict is None:
                dims = self.input_dims
                verdict = False
                if dims is not None and len(dims) == 4:
                    c, last = dims[1], dims[3]
                    verdict = (
                        isinstance(c, int)
                        and 0 < c <= MAX_GUESSED_CHANNELS
                        and not (isinstance(last, int) and last <= MAX_GUESSED_CHANNELS)
                    )
            self._channels_first = verdict
        return self._channels_first

    def image_layout(self):
        """``(3, C)`` for an image input ``(N, C, H, W)`` with a static ``C``,
        when the channel axis is clearly axis 1 (``channels_first``); None
        otherwise (channels-last, dynamic ``C``, not an image)."""
        dims = self.input_dims
        if dims is None or len(dims) != 4:
            return None
        c = dims[1]
        if isinstance(c, int) and c > 0 and self.channels_first():
            return (3, c)
        return None

    def check_sample_shape(self, sample_shape):
        dims = self.input_dims
        if dims is None:
            return
        if len(dims) != len(sample_shape) + 1:
            model_shape = self.model_input_shape()
            if len(dims) == len(sample_shape) + 2 and self.channels_first():
                fix = (
                    "If the samples lack the channel axis, add it with X[:, None] "
                    "(or pass input_shape=...)."
                )
            elif model_shape is not None and math.prod(model_shape) == math.prod(
                sample_shape
            ):
                # Channels-last or unclear: no guess at a channel axis.
                fix = (
                    "Reshape X to the model's per-sample shape, e.g. "
                    f"X.reshape(len(X), {', '.join(map(str, model_shape))})."
                )
            else:
                fix = "Pass input_shape=... or reshape X."
            raise ValueError(
                f"the ONNX model {self.source} input {self.input_name!r} has shape "
                f"{_show(dims)} (rank {len(dims)}), but the samples have shape "
                f"{tuple(sample_shape)} (rank {len(sample_shape) + 1} with the batch "
                f"axis). {fix}"
            )
        for want, got in zip(dims[1:], sample_shape):
            if isinstance(want, int) and want > 0 and want != got:
                raise ValueError(
                    f"the ONNX model {self.source} input {self.input_name!r} expects "
                    f"per-sample shape {_show(dims[1:])}, got {tuple(sample_shape)}."
                )

    @property
    def fixed_batch(self):
        d0 = self.input_dims[0] if self.input_dims else None
        return d0 if isinstance(d0, int) and d0 > 0 else None

    # -- layers ---------------------------------------------------------------
    def _float_outputs(self):
        """Node outputs of a floating type that depend on the inputs and are
        not known to be scalars (no batch axis), in graph order. Constants
        (``Constant`` nodes, weights dequantized or cast from initializers)
        are the same for every sample: no layer."""
        out = []
        input_names = {vi.name for vi in self.inputs}
        for node in self.nodes:
            for t in node.output:
                if not t or t in input_names or t in self.constants:
                    continue
                info = self._types.get(t)
                if info is not None and info[0] in _float_types() and info[1] != []:
                    out.append(t)
        return out

    def all_names(self):
        return [*self._float_outputs(), *self.alias]

    def resolve(self, name):
        floats = set(self._float_outputs())
        if name in floats:
            return name
        alias = self.alias.get(name)
        if alias is not None and alias in floats:
            return alias
        return None

    def _type_by_running(self, sample_shape):
        """Type the node outputs shape inference left untyped (those after an
        op onnx has no schema for, e.g. ``com.microsoft`` ones) from one run
        of the model on zeros: the floating ones with a batch axis become
        layers like the others. A model onnxruntime cannot run this way
        leaves them untyped."""
        skip = {vi.name for vi in self.inputs} | self.constants | self._not_tensors
        untyped = [
            t
            for node in self.nodes
            for t in node.output
            if t and t not in skip and t not in self._types
        ]
        if not untyped:
            return
        n = self.fixed_batch or 1
        batch = np.zeros((n, *sample_shape), dtype=np.float32)
        try:
            got = self._run_session(self._build(untyped, False), batch, untyped)
        except ValueError:
            return
        for t, v in got.items():
            v = np.asarray(v)
            if np.issubdtype(v.dtype, np.floating) and v.ndim >= 1 and len(v) == n:
                elem = self.onnx.helper.np_dtype_to_tensor_dtype(v.dtype)
                self._types[t] = (elem, [None, *v.shape[1:]])

    def list_layers(self, sample_shape):
        if sample_shape is not None:
            self._type_by_running(sample_shape)
        tensors = self._float_outputs()
        shapes = {}
        if sample_shape is not None and tensors:
            batch = np.zeros((1, *sample_shape), dtype=np.float32)
            shapes = {
                k: tuple(v.shape[1:])
                for k, v in self.run(batch, tensors, optimize=False).items()
            }
            # keep only the sessions used for extraction alive
            self._sessions.pop((tuple(tensors), False), None)
        rows = []
        for t in tensors:
            node = self.producer[t]
            if t in shapes:
                shape = shapes[t]
            else:
                dims = self._types[t][1]
                # A symbolic dimension (shape inference's "unk__3") is unknown.
                shape = (
                    None
                    if dims is None
                    else tuple(d if isinstance(d, int) else None for d in dims[1:])
                )
            rows.append(
                {
                    "name": t,
                    "op_type": node.op_type,
                    "shape": shape,
                    "node": node.name,
                    "reads": node.input[0] if node.input else None,
                }
            )
        return rows

    def _clip_nonneg(self, node):
        """Clip whose lower bound is a constant >= 0 (ReLU6 exports as Clip):
        the ``min`` attribute (opset < 11), or a ``min`` input held by an
        initializer or a ``Constant`` node (through ``Cast``/``Identity``)."""
        for a in node.attribute:
            if a.name == "min":
                return a.f >= 0
        if len(node.input) > 1 and node.input[1]:
            val = self._constant_value(node.input[1])
            return val is not None and bool(np.all(val >= 0))
        return False

    def _constant_value(self, name, depth=0):
        """The value of tensor ``name`` when an initializer, a ``Constant``
        node or a ``Cast``/``Identity`` of one gives it; else None."""
        for init in self.proto.graph.initializer:
            if init.name == name:
                return self.onnx.numpy_helper.to_array(init)
        node = self.producer.get(name)
        if node is None or depth > 4:
            return None
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return self.onnx.numpy_helper.to_array(a.t)
                if a.name in ("value_float", "value_int"):
                    return np.asarray(a.f if a.name == "value_float" else a.i)
                if a.name in ("value_floats", "value_ints"):
                    return np.asarray(a.floats if a.name == "value_floats" else a.ints)
            return None
        if node.op_type in ("Cast", "Identity") and node.input:
            return self._constant_value(node.input[0], depth + 1)
        return None

    def _group(self, node, t):
        """The top-level part of the model a node belongs to: the first module
        of torch's dynamo exporter's ``name_scopes`` (``['', 'layer1',
        'layer1.0', ...]``), else the first component of the node name
        (``/layer1/...``, as torch's TorchScript exporter names nodes)."""
        # (NodeProto has metadata_props from onnx 1.16 on)
        for prop in getattr(node, "metadata_props", ()):
            if prop.key == "pkg.torch.onnx.name_scopes":
                try:
                    scopes = ast.literal_eval(prop.value)
                except (ValueError, SyntaxError):
                    break
                if isinstance(scopes, list) and len(scopes) > 2:
                    return str(scopes[1])
                break
        name = node.name or t
        parts = name.strip("/").split("/")
        return parts[0] if len(parts) > 1 else name

    def auto_layers(self, rows):
        out = []
        for row in rows:
            op, t = row["op_type"], row["name"]
            node = self.producer[t]
            if op in NONNEG_OPS or (op == "Clip" and self._clip_nonneg(node)):
                out.append((t, self._group(node, t)))
            elif out and row["reads"] == out[-1][0] and self._summarises(node):
                # the pooled map summarises it; it stays in the same group
                out[-1] = (t, out[-1][1])
        return out

    def _summarises(self, node):
        """A pool, or a ReduceMean/ReduceMax over spatial axes only (not the
        batch axis 0 nor the channel axis 1)."""
        if node.op_type in POOL_OPS:
            return True
        if node.op_type not in SPATIAL_REDUCE_OPS or not node.input:
            return False
        axes = None
        for a in node.attribute:
            if a.name == "axes":  # opset < 18
                axes = list(a.ints)
        if axes is None and len(node.input) > 1 and node.input[1]:
            value = self._constant_value(node.input[1])  # opset 18 on
            axes = None if value is None else [int(v) for v in np.ravel(value)]
        dims = self._types.get(node.input[0], (None, None))[1]
        if not axes or dims is None:  # no axes: every axis, the batch too
            return False
        rank = len(dims)
        return all(2 <= (a % rank) for a in axes if -rank <= a < rank)

    # -- running ----------------------------------------------------------------
    def _build(self, outputs, dynamic_batch, level="disable"):
        onnx = self.onnx
        m = onnx.ModelProto()
        m.CopyFrom(self.inferred)
        g = m.graph
        if dynamic_batch:
            # Intermediate shapes carry the old batch size: drop them.
            del g.value_info[:]
            for vi in g.input:
                if vi.name == self.input_name or self.extra.get(vi.name, (0, 0))[1]:
                    dims = vi.type.tensor_type.shape.dim
                    if len(dims):
                        dims[0].Clear()
                        dims[0].dim_param = "batch"
        del g.output[:]
        for t in outputs:
            if t in self._types:
                elem = self._types[t][0]
                g.output.append(onnx.helper.make_tensor_value_info(t, elem, None))
            else:  # typed by the run itself (_type_by_running)
                g.output.append(onnx.helper.make_empty_tensor_value_info(t))
        opts = self.ort.SessionOptions()
        # A tensor listed as a graph output is kept by every fusion; an
        # optimized session is checked against the unoptimized one anyway
        # (_optimized) before it is used.
        opts.graph_optimization_level = getattr(
            self.ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[level]
        )
        # Failures come back as exceptions with ORT's message; the rewrite probe
        # of a fixed batch dim may fail on purpose, so keep the log quiet.
        opts.log_severity_level = 4
        threads = _env_threads()
        if threads is not None:
            opts.intra_op_num_threads = threads
        for key, value in _spin_config(self.ort.__version__).items():
            opts.add_session_config_entry(key, value)
        try:
            return self.ort.InferenceSession(
                m.SerializeToString(), sess_options=opts, providers=self.providers
            )
        except Exception as exc:
            raise ValueError(
                f"onnxruntime could not load the ONNX model {self.source} "
                f"(with outputs {list(outputs)[:5]}...): {type(exc).__name__}: {exc}"
            ) from exc

    def check_values(self, X):
        """Refuse values of ``X`` (one sample per row) that the cast to an
        integer image input would change (none for float inputs)."""
        if np.issubdtype(self.input_dtype, np.integer):
            _check_whole(X, self.input_dtype, self.input_name)

    def _feed(self, batch):
        feed = {self.input_name: np.ascontiguousarray(batch, dtype=self.input_dtype)}
        n = batch.shape[0]
        for name, (value, batched) in self.extra.items():
            feed[name] = (
                np.ascontiguousarray(np.broadcast_to(value, (n, *value.shape)))
                if batched
                else value
            )
        return feed

    def _run_session(self, sess, batch, outputs):
        feed = self._feed(batch)  # its own errors name X, not onnxruntime
        try:
            res = sess.run(list(outputs), feed)
        except Exception as exc:
            raise ValueError(
                f"onnxruntime failed to run the ONNX model {self.source} on input "
                f"{self.input_name!r} of shape {tuple(batch.shape)}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return dict(zip(outputs, res))

    def _run_entry(self, entry, batch, outputs):
        """Run a (session, chunk) pair; chunked runs pad the last chunk."""
        sess, chunk = entry
        if chunk is None:
            return self._run_session(sess, batch, outputs)
        parts = []
        n = batch.shape[0]
        for i in range(0, n, chunk):
            part = self._run_session(sess, _pad(batch[i : i + chunk], chunk), outputs)
            parts.append({k: v[: min(chunk, n - i)] for k, v in part.items()})
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in outputs}

    def _batch_entry(self, outputs, sample_shape):
        """Unoptimized session, chunk size, and whether the batch dim was
        rewritten; a fixed batch dim is rewritten when that is safe."""
        fixed = self.fixed_batch
        plain = self._build(outputs, dynamic_batch=False)
        if fixed is None:
            return (plain, None), False
        try:
            dyn = self._build(outputs, dynamic_batch=True)
            # Verify on more samples than one chunk holds: a Reshape with a
            # hard-coded batch size either fails here or mixes the samples up.
            rng = np.random.default_rng(0)
            probe = rng.random((fixed + 1, *sample_shape), dtype=np.float32)
            if not np.issubdtype(self.input_dtype, np.floating):
                probe = np.floor(probe * 2)  # whole numbers for an integer input
            together = self._run_session(dyn, probe, outputs)
            alone = self._run_entry((plain, fixed), probe, outputs)
            if all(
                together[t].shape == alone[t].shape
                and np.allclose(together[t], alone[t], rtol=1e-4, atol=1e-5)
                for t in outputs
            ):
                return (dyn, None), True
        except ValueError:
            pass
        return (plain, fixed), False

    def _check_samples(self, batch):
        """A few samples of ``batch``, and as many random signed ones (float
        inputs), on which an optimized session must match the plain one."""
        real = np.asarray(batch[: VERIFY_SAMPLES // 2], dtype=np.float32)
        if not np.issubdtype(self.input_dtype, np.floating):
            return real
        rng = np.random.default_rng(0)
        shape = (VERIFY_SAMPLES - len(real), *batch.shape[1:])
        return np.concatenate([real, rng.standard_normal(shape, dtype=np.float32)])

    def _tolerance(self, tensor):
        """Relative (max-norm) difference allowed between optimized and not."""
        tol = 1e-2 if self.on_cuda else 1e-3  # cuDNN may pick TF32 kernels
        elem = self._types[tensor][0]
        eps = {
            self.onnx.TensorProto.FLOAT16: 2.0**-10,
            self.onnx.TensorProto.BFLOAT16: 2.0**-7,
        }.get(elem, 0.0)
        return max(tol, 32 * eps)

    def _optimized(self, entry, dynamic, outputs, level, batch):
        """The optimized session when it reproduces ``entry`` (unoptimized) on
        a few samples of ``batch`` and random ones, else ``entry`` with a
        warning. Returns (entry, level it runs at)."""
        what = f"onnx_optimization={level!r}"
        fallback = (
            "; running the graph with optimizations off instead "
            "(onnx_optimization='disable' avoids this check)."
        )
        samples = self._check_samples(batch)
        try:
            want = self._run_entry(entry, samples, outputs)
        except ValueError as exc:
            warnings.warn(
                f"{what}: the ONNX model {self.source} could not run on the "
                f"{len(samples)} samples that check its optimized graph ({exc})"
                f"{fallback}",
                RuntimeWarning,
                stacklevel=2,
            )
            return entry, "disable"
        try:
            opt = (self._build(outputs, dynamic, level), entry[1])
            got = self._run_entry(opt, samples, outputs)
        except ValueError as exc:
            warnings.warn(
                f"{what}: onnxruntime could not build or run the optimized graph "
                f"of the ONNX model {self.source} ({exc}){fallback}",
                RuntimeWarning,
                stacklevel=2,
            )
            return entry, "disable"
        bad = []
        for t in outputs:
            why = _mismatch(got[t], want[t], self._tolerance(t))
            if why is not None:
                bad.append(f"{t!r}: {why}")
        if bad:
            warnings.warn(
                f"{what}: onnxruntime's optimized graph of the ONNX model "
                f"{self.source} does not reproduce the requested tensor(s) of the "
                f"unoptimized graph ({'; '.join(bad[:3])}){fallback}",
                RuntimeWarning,
                stacklevel=2,
            )
            return entry, "disable"
        return opt, level

    def _session_for(self, outputs, batch, optimize=True):
        """(session, chunk size) for these outputs, built on first use.

        With ``optimize`` the session runs at ``self.optimization`` once it
        has passed the check against the unoptimized graph (on the first
        samples of ``batch`` and random ones).
        """
        key = (tuple(outputs), optimize)
        if key in self._sessions:
            return self._sessions[key]
        if any(t not in self._types for t in outputs):
            # an adapter rebuilt (after unpickling) for layers a run typed
            self._type_by_running(batch.shape[1:])
        entry, dynamic = self._batch_entry(outputs, batch.shape[1:])
        used = "disable"
        if optimize and self.optimization != "disable":
            entry, used = self._optimized(
                entry, dynamic, outputs, self.optimization, batch
            )
        self._sessions[key] = entry
        if optimize:
            self.optimization_used[tuple(outputs)] = used
        return entry

    def run(self, batch, names, *, optimize=True):
        """Return {name: float32 ndarray (B, ...)} for the requested tensors.

        ``optimize=False`` runs the graph without optimizations whatever
        ``self.optimization`` says (listing layers needs no speed).
        """
        names = list(names)
        entry = self._session_for(names, batch, optimize)
        res = self._run_entry(entry, batch, names)
        return {k: np.asarray(v, dtype=np.float32) for k, v in res.items()}

    @contextlib.contextmanager
    def runner(self, names):
        """Context yielding ``run(batch) -> {name: float32 ndarray}``."""
        names = list(names)
        yield lambda batch: self.run(batch, names)

    @property
    def chunked(self):
        """True when the last built session runs in fixed-size chunks."""
        return any(c is not None for _, c in self._sessions.values())


def _infer_shapes(onnx, proto):
    """``proto`` with the types and shapes onnx can infer for its tensors.

    A node whose shape inference raises (skl2onnx's ``ZipMap`` with onnx
    1.14, for one; nodes onnx has no schema for are skipped, not fatal)
    makes inference fail for the whole graph. Then it runs again on the part
    of the graph made of default-domain nodes whose inputs are graph inputs,
    initializers, outputs of other such nodes, or tensors the model already
    types in its ``value_info`` (usually the network itself), and the types
    found are added to a copy of ``proto``. Tensors beyond it stay untyped.
    Models over protobuf's 2 GB limit, which onnx cannot infer in memory,
    are returned as they are.
    """
    try:
        return onnx.shape_inference.infer_shapes(proto)
    except Exception:
        pass
    if proto.ByteSize() >= 2**31:
        return proto
    g = proto.graph
    typed = {
        vi.name: vi
        for vi in g.value_info
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type
    }
    known = {vi.name for vi in g.input} | {t.name for t in g.initializer}
    kept, fed = [], []
    for node in g.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        missing = [name for name in node.input if name and name not in known]
        if all(name in typed for name in missing):
            # a tensor from a node left out, typed by the model: an input here
            fed.extend(typed[name] for name in dict.fromkeys(missing))
            known.update(missing)
            kept.append(node)
            known.update(name for name in node.output if name)
    part = onnx.helper.make_graph(
        kept,
        g.name or "graph",
        [*g.input, *fed],
        [vi for vi in g.output if vi.name in known],
        initializer=list(g.initializer),
    )
    try:
        inferred = onnx.shape_inference.infer_shapes(
            onnx.helper.make_model(
                part,
                opset_imports=list(proto.opset_import),
                ir_version=proto.ir_version,
            )
        )
    except Exception:
        return proto
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    have = {vi.name for vi in (*g.input, *g.value_info, *g.output)}
    out.graph.value_info.extend(
        vi for vi in inferred.graph.value_info if vi.name not in have
    )
    return out


def _env_threads():
    """``OMP_NUM_THREADS`` as a positive int, or None (unset or not one).

    onnxruntime sizes its thread pool to the machine's cores and ignores the
    variable; joblib sets it in its workers (cores / workers), and so do
    users who limit a process's threads: sessions follow it like torch does.
    """
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def _check_whole(X, dtype, input_name, chunk_elements=1 << 20):
    """Refuse values an integer model input would change: casting 0.5 to
    uint8 gives 0, -1 gives 255 and 2**31 gives -2**31 for int32, silently.
    ``X``: samples, one per row, floats or integers (as given: integer images
    are not converted up front), checked a million values at a time (rows of
    a 224 x 224 x 3 image: 5 at a time), so that the masks stay small."""
    info = np.iinfo(dtype)
    integers = np.issubdtype(X.dtype, np.integer) or X.dtype == np.bool_
    # the bounds as floats: info.max + 1 (2**8, 2**31, 2**63) is exact where
    # info.max itself may not be
    lo, hi = float(info.min), float(info.max) + 1.0  # powers of two: exact in
    # float32 too, so float32 X (the extractor's) is compared as it is
    row = max(1, X[0].size) if len(X) else 1
    step = max(1, chunk_elements // row)
    for start in range(0, len(X), step):
        part = X[start : start + step]
        if integers:  # whole already; compared as Python ints, exactly
            if int(part.min()) >= info.min and int(part.max()) <= info.max:
                continue
            bad = (part < info.min) | (part > info.max)
        else:
            bad = (part != np.floor(part)) | (part < lo) | (part >= hi)
        if bad.any():
            i = np.unravel_index(int(np.flatnonzero(bad)[0]), part.shape)
            value = part[i].item() if integers else float(part[i])
            raise ValueError(
                f"X holds {value!r} (sample {start + int(i[0])}, position "
                f"{tuple(int(k) for k in i[1:])}), but the ONNX model's input "
                f"{input_name!r} is {np.dtype(dtype).name}, which would change "
                f"it when cast; expected whole numbers in [{info.min}, "
                f"{info.max}] (e.g. pixel values before scaling to [0, 1])."
            )


def _constant_tensors(onnx, graph, init_names):
    """Names of the tensors of ``graph`` that do not depend on its inputs:
    initializers and the outputs of nodes all of whose inputs are such
    tensors (``Constant``, a ``DequantizeLinear`` of weights, ...). A node
    with a subgraph (``If``, ``Loop``, ``Scan``) may read any outer tensor:
    its outputs count as input-dependent."""
    subgraph = {onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS}
    const = set(init_names)
    for node in graph.node:  # ONNX graphs are topologically sorted
        if any(a.type in subgraph for a in node.attribute):
            continue
        if all(i in const for i in node.input if i):
            const.update(o for o in node.output if o)
    return const


def _mismatch(got, want, tol):
    """None when ``got`` equals ``want`` up to ``tol`` times ``want``'s largest
    magnitude (and has NaN/inf at the same places), else what differs."""
    if got.shape != want.shape:
        return f"shape {got.shape} instead of {want.shape}"
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    finite = np.isfinite(want)
    if not np.array_equal(finite, np.isfinite(got)) or not np.array_equal(
        got[~finite], want[~finite], equal_nan=True
    ):
        return "NaN or infinite values at other places"
    if not finite.any():
        return None
    got, want = got[finite], want[finite]
    scale = float(np.abs(want).max())
    diff = float(np.abs(got - want).max())
    if diff <= tol * scale:
        return None
    return (
        f"largest difference {diff:.3g} for values up to {scale:.3g}, more than "
        f"the {tol:g} relative tolerance"
    )


def _pad(a, size):
    if a.shape[0] == size:
        return a
    pad = np.zeros((size - a.shape[0], *a.shape[1:]), dtype=a.dtype)
    return np.concatenate([a, pad])


def _show(dims):
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"
