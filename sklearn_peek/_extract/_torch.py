"""PyTorch adapter: capture module outputs with forward hooks.

Layers are named by qualified module name (``features.3``,
``layer1.0.relu``), as ``model.named_modules()`` spells them. A module that
runs several times in one forward pass (torchvision's ``BasicBlock.relu``)
answers with the output of its last call; ``name:k`` picks call ``k``
(0-based) instead.
"""

from __future__ import annotations

import contextlib
import re
import threading
import weakref

import numpy as np

from .._backend import resolve_device
from ._channels import ChannelMismatchError

# Activation modules whose outputs are never negative; pooling modules that
# keep that property when they read such an output. Both drive layers="auto".
NONNEG_ACTIVATIONS = frozenset(
    {"ReLU", "ReLU6", "Sigmoid", "Softplus", "Hardsigmoid", "Softmax"}
)
POOLING = frozenset(
    {
        "MaxPool1d",
        "MaxPool2d",
        "MaxPool3d",
        "AvgPool1d",
        "AvgPool2d",
        "AvgPool3d",
        "AdaptiveAvgPool1d",
        "AdaptiveAvgPool2d",
        "AdaptiveAvgPool3d",
        "AdaptiveMaxPool1d",
        "AdaptiveMaxPool2d",
        "AdaptiveMaxPool3d",
        "LPPool2d",
    }
)

_CALL_RE = re.compile(r"^(.*):(\d+)$")

# One lock per module: extraction hooks submodules and switches every module
# of the model to eval mode (and maybe another device) for its pass, so two
# passes over one module at once (clones share it; GridSearchCV under the
# threading backend; a network and, in another extractor, one of its
# blocks) would read each other's outputs and undo each other's mode. A pass
# holds the locks of all the modules it runs, taken in one global order (by
# id) so that two passes never wait for each other in a cycle.
_LOCKS = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def _modules_locked(model):
    modules = {id(m): m for m in model.modules()}
    with _LOCKS_GUARD:
        locks = []
        for key in sorted(modules):
            lock = _LOCKS.get(modules[key])
            if lock is None:
                lock = _LOCKS[modules[key]] = threading.RLock()
            locks.append(lock)
    with contextlib.ExitStack() as stack:
        for lock in locks:
            stack.enter_context(lock)
        yield


def is_torch_module(model):
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return False
    return isinstance(model, torch.nn.Module)


def _split_call(name):
    m = _CALL_RE.match(name)
    if m:
        return m.group(1), int(m.group(2))
    return name, None


class TorchAdapter:
    """Run an ``nn.Module`` and return the outputs of named submodules.

    The model is put in eval mode for each run and every module's
    ``training`` flag is restored afterwards; hooks are removed in a
    ``finally`` block; the parameters are moved to ``device`` for the run
    only when they live elsewhere, and moved back.
    """

    kind = "torch"
    #: When True, runner() yields float32 tensors on ``device`` (not NumPy).
    keep_on_device = False

    def __init__(self, model, device=None, *, param="device"):
        import torch

        if isinstance(model, torch.jit.ScriptModule):
            raise ValueError(
                f"model is a TorchScript module ({type(model).__name__}, from "
                "torch.jit.script or torch.jit.trace): its submodules do not run "
                "as Python modules, so their outputs cannot be read with forward "
                "hooks. Expected the eager nn.Module it was made from, or the "
                "network exported to ONNX (torch.onnx.export; the command line "
                "exports a TorchScript file itself)."
            )
        tensors = [*model.named_parameters(), *model.named_buffers()]
        empty = [name for name, t in tensors if t.is_meta]
        if empty:
            names = ", ".join(empty[:3]) + (", ..." if len(empty) > 3 else "")
            raise ValueError(
                f"model has {len(empty)} parameters or buffers on torch's 'meta' "
                f"device ({names}): they have shapes but no values, so "
                "the network cannot run. Expected a model with its weights: "
                "e.g. model.to_empty(device='cpu') and then "
                "model.load_state_dict(state_dict)."
            )
        self.torch = torch
        self.model = model
        self.modules = dict(model.named_modules())
        self.modules.pop("", None)  # the root: its output is the model output
        if device is None:
            self.device = self._model_device()
        else:
            dev = resolve_device(device, param=param)
            self.device = dev if dev is not None else torch.device("cpu")
        self.dtype = self._model_dtype()

    # -- model facts --------------------------------------------------------
    def _model_device(self):
        for p in self.model.parameters():
            return p.device
        for b in self.model.buffers():
            return b.device
        return self.torch.device("cpu")

    def _model_dtype(self):
        for p in self.model.parameters():
            if p.is_floating_point():
                return p.dtype
        return self.torch.float32

    def check_values(self, X):
        """Nothing to refuse: the batch is cast to the model's float dtype."""

    def model_input_shape(self):
        """Per-sample input shape known from the model: unknown for torch."""
        return None

    def image_layout(self):
        """``(rank, channels)`` of one sample as the first convolution takes it.

        ``rank`` counts the channel axis (Conv2d: 3, for ``(C, H, W)``);
        ``channels`` is its ``in_channels``. The first convolution in
        definition order, which is usually but not always the first to run;
        None when the model has none.
        """
        conv = {
            self.torch.nn.Conv1d: 2,
            self.torch.nn.Conv2d: 3,
            self.torch.nn.Conv3d: 4,
        }
        for mod in self.model.modules():
            for cls, rank in conv.items():
                if isinstance(mod, cls):
                    return rank, mod.in_channels
        return None

    # -- running ------------------------------------------------------------
    @contextlib.contextmanager
    def _session(self):
        """Eval mode, inference mode and the right device, undone afterwards;
        one pass over a module at a time (see ``_LOCKS``)."""
        torch = self.torch
        with _modules_locked(self.model):
            flags = [(m, m.training) for m in self.model.modules()]
            original = self._model_device()
            moved = original != self.device
            try:
                if moved:
                    self.model.to(self.device)
                self.model.eval()
                with torch.inference_mode():
                    yield
            finally:
                for m, flag in flags:
                    m.training = flag
                if moved:
                    self.model.to(original)

    @contextlib.contextmanager
    def _hooked(self, hooks_for):
        """Forward hooks on ``hooks_for`` (dict name -> hook), always removed."""
        handles = []
        try:
            for name, hook in hooks_for.items():
                handles.append(self.modules[name].register_forward_hook(hook))
            yield
        finally:
            for h in handles:
                h.remove()

    def _call(self, batch):
        torch = self.torch
        src = torch.from_numpy(np.ascontiguousarray(batch))
        x = src.to(device=self.device, dtype=self.dtype)
        if x.data_ptr() == src.data_ptr():
            # No copy was made: x is the caller's memory (a float32 X on the
            # CPU). A model that changes its input in place (a first
            # ReLU(inplace=True), x.relu_()) would change the caller's X and
            # the input block read from it, so the model gets its own copy.
            x = x.clone()
        try:
            self.model(x)
        except LayerOutputError:
            raise
        except Exception as exc:
            what = (
                f"running the torch model on input of shape {tuple(batch.shape)} "
                f"failed: {type(exc).__name__}: {exc}."
            )
            layout = self.image_layout()
            if layout is not None:
                rank, want = layout
                sample = tuple(batch.shape[1:])
                no_axis = len(sample) == rank - 1  # (H, W) for a Conv2d
                if no_axis or (len(sample) == rank and sample[0] != want):
                    raise ChannelMismatchError(
                        want,
                        sample,
                        no_axis=no_axis,
                        layer="first convolution",
                        detail=what,
                    ) from exc
            raise ValueError(
                f"{what} If the input does not fit the model, check input_shape "
                "(the per-sample shape, e.g. (1, 28, 28)) and the number of "
                "channels."
            ) from exc

    def list_layers(self, sample_shape):
        """Rows (name, op_type, shape, calls) in the order the layers first run.

        ``shape`` is the per-sample output shape of the module's last call.
        """
        torch = self.torch
        seen = {}
        order = []
        # Which tensor each pooling module reads, to tell whether it follows a
        # non-negative activation.
        produced_by = {}
        reads = {}
        # Tensors are told apart by address: every output is kept alive until
        # the pass ends, so that no later tensor reuses a freed one's memory.
        alive = []

        def make_hook(name):
            def hook(module, args, output):
                if not torch.is_tensor(output):
                    return
                alive.append(output)
                if name not in seen:
                    order.append(name)
                    seen[name] = {"calls": 0}
                info = seen[name]
                info["calls"] += 1
                info["shape"] = tuple(output.shape[1:])
                if args and torch.is_tensor(args[0]):
                    reads[name] = produced_by.get(_tensor_key(args[0]))
                if len(module._modules) == 0:
                    produced_by[_tensor_key(output)] = name
                else:  # a container hands on its last child's tensor
                    produced_by.setdefault(_tensor_key(output), name)

            return hook

        batch = np.zeros((1, *sample_shape), dtype=np.float32)
        with self._session(), self._hooked({n: make_hook(n) for n in self.modules}):
            self._call(batch)
        rows = []
        for name in order:
            op = type(self.modules[name]).__name__
            rows.append(
                {
                    "name": name,
                    "op_type": op,
                    "shape": seen[name]["shape"],
                    "calls": seen[name]["calls"],
                    "reads": reads.get(name),
                }
            )
        return rows

    def auto_layers(self, rows):
        """Candidates for layers="auto" as (name, top-level group) pairs."""
        out = []
        for row in rows:
            op, name = row["op_type"], row["name"]
            if op in NONNEG_ACTIVATIONS and op != "Softmax":
                out.append((name, name.split(".")[0]))
            elif op in POOLING and out and row["reads"] == out[-1][0]:
                # the pooled map summarises it; it stays in the same group
                out[-1] = (name, out[-1][1])
        return out

    def resolve(self, name):
        """Canonical layer name, or None when the model has no such module."""
        base, _ = _split_call(name)
        return name if base in self.modules else None

    def all_names(self):
        return list(self.modules)

    @contextlib.contextmanager
    def runner(self, names):
        """Context yielding ``run(batch) -> {name: float32 ndarray (B, ...)}``.

        Eval mode, the device move and the hooks are set up once for all the
        batches run inside the context, and undone when it exits.
        """
        torch = self.torch
        names = list(names)
        wanted = {}
        for name in names:
            base, k = _split_call(name)
            wanted.setdefault(base, []).append((name, k))
        got = {}
        calls = dict.fromkeys(wanted, 0)

        def make_hook(base):
            def hook(module, args, output):
                if not torch.is_tensor(output):
                    raise LayerOutputError(
                        f"layer {base!r} ({type(module).__name__}) returns "
                        f"{type(output).__name__}, not a tensor; pick a submodule "
                        "that returns a tensor."
                    )
                if output.is_complex():  # float32 would drop the imaginary part
                    raise LayerOutputError(
                        f"layer {base!r} ({type(module).__name__}) returns complex "
                        f"values ({output.dtype}), not real activations; pick a "
                        "layer after the complex part (e.g. after abs())."
                    )
                idx = calls[base]
                calls[base] += 1
                for name, k in wanted[base]:
                    if k is None or k == idx:
                        # Copy now: an in-place op later in the graph (ReLU with
                        # inplace=True) would change the tensor after the hook.
                        got[name] = output.detach().clone()

            return hook

        def run(batch):
            got.clear()
            for b in calls:
                calls[b] = 0
            self._call(batch)
            missing = [n for n in names if n not in got]
            if missing:
                raise ValueError(
                    f"layers {missing} did not run in the forward pass (a module "
                    "that is defined but not called, or a call index ':k' beyond "
                    f"the number of calls {calls})."
                )
            if self.keep_on_device:  # transform(output="torch"): no host copy
                return {n: got[n].to(dtype=torch.float32) for n in names}
            return {
                n: got[n].to(device="cpu", dtype=torch.float32).numpy() for n in names
            }

        with self._session(), self._hooked({b: make_hook(b) for b in wanted}):
            yield run

    def run(self, batch, names):
        """Return {name: float32 ndarray (B, ...)} for the requested layers."""
        with self.runner(names) as run:
            return run(batch)


class LayerOutputError(TypeError):
    """A hooked module returned something other than a real tensor."""


def _tensor_key(t):
    try:
        return (t.data_ptr(), tuple(t.shape), t.dtype)
    except Exception:  # pragma: no cover - tensors without storage
        return id(t)
