"""Throughput of LayerActivationExtractor against a plain forward pass.

For a LeNet-5-size network (1x28x28 inputs) and a ResNet-18 (CIFAR-style,
3x32x32 inputs), written here (torchvision is not needed), this times:

- torch: ``extractor.transform(X)`` reading 3 layers (+ the input block;
  one ONNX row reads the 3 layers alone, ``include_input=False``)
  against a plain ``model(x)`` loop over the same batches under
  ``torch.inference_mode()``;
- ONNX (the same network exported with ``torch.onnx.export``): the extractor
  with ``onnx_optimization="disable"`` (graph optimizations off) and with
  ``"all"`` (the default), each against a plain onnxruntime session at the
  same optimization level and thread-spinning settings returning only the
  final output (the ratio isolates the extractor's own cost), and both
  against onnxruntime's defaults (all graph optimizations, threads spinning
  for onnxruntime's default time: what a user's plain session would run).
  The extractor lets idle threads spin for ``_onnx.SPIN_US`` microseconds
  where onnxruntime can bound the spin (1.27 and later), else not at all.

Overhead = extractor time / baseline time - 1 (target: <= 15%). Each number is
the best of ``--repeat`` runs, baseline and extractor alternating, all in
this process. Prints a markdown table, then the ``fit`` times (``"all"``
builds a second, unoptimized session in ``fit`` to check the optimized one)
and the largest difference between the two extractors' outputs.

Usage::

    python benchmarks/bench_extract.py               # a few minutes on 2 cores
    python benchmarks/bench_extract.py --quick       # smoke run
"""

from __future__ import annotations

import argparse
import io
import platform
import time
import warnings

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from sklearn_peek import LayerActivationExtractor
from sklearn_peek._extract._onnx import SPIN_US, _spin_config, torch_export_options
from sklearn_peek._lenet import LeNet

SPIN = (
    f"spin {SPIN_US} µs"
    if _spin_config(ort.__version__).get("session.intra_op.allow_spinning") == "1"
    else "no spin"
)


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 with the CIFAR stem (3x3 conv, no max-pool) for 32x32 inputs."""

    def __init__(self, n_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        widths = [64, 128, 256, 512]
        c_in = 64
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layer = nn.Sequential(BasicBlock(c_in, w, stride), BasicBlock(w, w, 1))
            setattr(self, f"layer{i + 1}", layer)
            c_in = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, n_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _best(repeat, *fns):
    """Best-of-``repeat`` seconds of each callable, run alternately.

    One warm-up call each (allocations, onnxruntime kernels) first;
    alternating keeps slow phases of a shared machine from favouring one side.
    """
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, t in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [min(t) for t in times]


def _export(model, shape):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            torch.zeros(1, *shape),
            buf,
            **torch_export_options(),
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
        )
    return buf.getvalue()


def _plain_ort(model_bytes, level, spin, X4, batch_size):
    """A plain session's loop over the batches, returning only the final output.

    ``level``: "disable" or "all"; ``spin``: True for onnxruntime's default
    spinning, False for the extractor's settings (``_spin_config``).
    """
    opts = ort.SessionOptions()
    if level == "disable":
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if not spin:
        for key, value in _spin_config(ort.__version__).items():
            opts.add_session_config_entry(key, value)
    sess = ort.InferenceSession(
        model_bytes, sess_options=opts, providers=["CPUExecutionProvider"]
    )

    def run():
        for i in range(0, len(X4), batch_size):
            sess.run(["logits"], {"x": X4[i : i + batch_size]})

    return run


def bench(name, model, shape, torch_layers, onnx_layers, n, batch_size, repeat):
    """Table rows and, per ONNX setting, (fit seconds, largest difference)."""
    rng = np.random.default_rng(0)
    X = rng.random((n, int(np.prod(shape))), dtype=np.float32)
    X4 = X.reshape(n, *shape)
    rows = []

    def row(runtime, setting, base, ext, t_base, t_ext):
        rows.append(
            (name, runtime, setting, base, n, ext.n_features_out_, t_base, t_ext)
        )

    def plain_torch():
        with torch.inference_mode():
            for i in range(0, n, batch_size):
                model(torch.from_numpy(X4[i : i + batch_size]))

    ext = LayerActivationExtractor(
        model, torch_layers, input_shape=shape, batch_size=batch_size, progress=False
    ).fit(X)
    t_base, t_torch = _best(repeat, plain_torch, lambda: ext.transform(X))
    row("torch", "n/a", "model(x)", ext, t_base, t_torch)

    model_bytes = _export(model, shape)
    label = {"disable": "opt. off", "all": "opt. all (default)"}
    exts, t_ext, notes = {}, {}, {}
    for level in ("disable", "all"):

        def fit(level=level, **kw):
            return LayerActivationExtractor(
                model_bytes,
                onnx_layers,
                batch_size=batch_size,
                progress=False,
                onnx_optimization=level,
                **kw,
            ).fit(X)

        (t_fit,) = _best(min(repeat, 3), fit)
        exts[level] = fit()
        assert exts[level].onnx_optimization_ == level  # no fallback
        notes[level] = [t_fit]
        t_base, t_ext[level] = _best(
            repeat,
            _plain_ort(model_bytes, level, False, X4, batch_size),
            lambda level=level: exts[level].transform(X),
        )
        base = f"ORT, opt. {'off' if level == 'disable' else 'all'}, {SPIN}"
        row("onnx", label[level], base, exts[level], t_base, t_ext[level])
    # The condition, literally: 3 layers, no input block (the input
    # copy is about a third of LeNet-5's output), optimized graph.
    ext3 = fit("all", include_input=False)
    t_base, t3 = _best(
        repeat,
        _plain_ort(model_bytes, "all", False, X4, batch_size),
        lambda: ext3.transform(X),
    )
    row("onnx", "opt. all, 3 layers only", f"ORT, opt. all, {SPIN}", ext3, t_base, t3)
    diff = float(np.abs(exts["all"].transform(X) - exts["disable"].transform(X)).max())
    notes["all"].append(diff)
    # onnxruntime's defaults spin idle worker threads, which slows any other
    # session in the process: time this baseline on its own, after the rest
    # (the sessions above are gone with their loops).
    (t_base,) = _best(repeat, _plain_ort(model_bytes, "all", True, X4, batch_size))
    for level in ("all", "disable"):
        row("onnx", label[level], "ORT defaults", exts[level], t_base, t_ext[level])
    return rows, notes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-lenet", type=int, default=4096)
    parser.add_argument("--n-resnet", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: stable on a shared box)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat")
    parser.add_argument(
        "--nets",
        choices=("both", "lenet", "resnet"),
        default="both",
        help="which network(s) to time (repeat LeNet-5 runs: its 40 ms runs are noisy)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.n_lenet, args.n_resnet, args.repeat = 512, 32, 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    nets = (
        (
            "LeNet-5 (1x28x28)",
            LeNet((1, 28, 28), 10).eval(),  # the classic LeNet-5 of the case studies
            (1, 28, 28),
            ["pool1", "pool2", "relu3"],
            [
                "/pool1/MaxPool_output_0",
                "/pool2/MaxPool_output_0",
                "/relu3/Relu_output_0",
            ],
            args.n_lenet,
        ),
        (
            "ResNet-18 (3x32x32)",
            ResNet18().eval(),
            (3, 32, 32),
            ["layer2", "layer3", "layer4"],
            [
                "/layer2/layer2.1/relu_1/Relu_output_0",
                "/layer3/layer3.1/relu_1/Relu_output_0",
                "/layer4/layer4.1/relu_1/Relu_output_0",
            ],
            args.n_resnet,
        ),
    )
    if args.nets != "both":
        nets = tuple(n for n in nets if n[0].lower().startswith(args.nets))
    rows, notes = [], {}
    for name, *spec in nets:
        more, notes[name.split()[0]] = bench(name, *spec, args.batch_size, args.repeat)
        rows += more
    print(
        f"\ntorch {torch.__version__}, onnxruntime {ort.__version__}, "
        f"{platform.processor() or platform.machine()}, {args.threads} threads, "
        f"batch_size={args.batch_size}, best of {args.repeat}; the extractor reads 3 "
        "layers plus the input block (float32 output, nonneg='error' checks on); "
        f"the extractor's onnxruntime threads: {SPIN}.\n"
    )
    print(
        "| network | runtime | extractor | baseline | n | features out | baseline s "
        "| extractor s | baseline img/s | extractor img/s | overhead |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, rt, setting, base, n, nf, tb, te in rows:
        print(
            f"| {name} | {rt} | {setting} | {base} | {n} | {nf} | {tb:.3f} | "
            f"{te:.3f} | {n / tb:,.0f} | {n / te:,.0f} | {100 * (te / tb - 1):+.1f}% |"
        )
    print()
    for net, by_level in notes.items():
        (fit_off,), (fit_all, diff) = by_level["disable"], by_level["all"]
        print(
            f"{net} ONNX: fit {fit_off:.3f} s (opt. off), {fit_all:.3f} s (opt. "
            f"all, with the check); largest |all - off| in the output: {diff:.2g}"
        )


if __name__ == "__main__":
    main()
