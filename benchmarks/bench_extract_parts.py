"""What the extractor's overhead on a small network is made of (LeNet-5, ONNX).

Backs the breakdown and the thread-spinning numbers in
``docs/user_guide/extraction.rst``. Each configuration runs in its own
process (onnxruntime's spinning threads would otherwise slow the next
session timed), ``--rounds`` times alternately, best time kept:

- ``plain``: a plain session returning the final output, with onnxruntime's
  default spinning, with spinning off, and with the extractor's settings
  (``_onnx._spin_config``);
- ``run3``: a session with the extractor's settings returning the three
  tensors the extractor reads, nothing else;
- ``copy``: ``run3`` plus copying the tensors into a new result matrix;
- ``copy_reused``: the same copy into one result matrix allocated once
  before timing, so its pages are already mapped: the difference to
  ``copy`` is what the operating system's first touch of a fresh result
  (page faults, zeroing) costs;
- ``checks``: ``copy`` plus a minimum and a maximum of each tensor (what the
  NaN and non-negativity checks cost), i.e. the bare work of extraction;
- ``extractor``: ``LayerActivationExtractor.transform`` itself;
- ``extractor_out``: ``transform(X, out=buf)`` with ``buf`` allocated once
  (the first-touch cost left out, as in ``copy_reused``).

Then, per spinning setting: the process CPU time during 0.3 s of idling
right after a run, and the time of a NumPy matrix product started right
after a run.

Usage::

    python benchmarks/bench_extract_parts.py            # about 2 minutes
    python benchmarks/bench_extract_parts.py --rounds 1 # smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

LAYERS = ["/pool1/MaxPool_output_0", "/pool2/MaxPool_output_0", "/relu3/Relu_output_0"]
N = 4096


def _model_bytes():
    import torch
    from bench_extract import _export  # same folder: on sys.path as a script

    from sklearn_peek._lenet import LeNet

    torch.manual_seed(0)
    return _export(LeNet((1, 28, 28), 10).eval(), (1, 28, 28))


def _session(model_bytes, spin, outputs=None):
    import onnx
    import onnxruntime as ort

    from sklearn_peek._extract._onnx import _spin_config

    opts = ort.SessionOptions()
    if spin == "off":
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    elif spin == "extractor":
        for key, value in _spin_config(ort.__version__).items():
            opts.add_session_config_entry(key, value)
    if outputs is not None:
        m = onnx.load_from_string(model_bytes)
        del m.graph.output[:]
        for t in outputs:
            m.graph.output.append(
                onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
            )
        model_bytes = m.SerializeToString()
    return ort.InferenceSession(
        model_bytes, sess_options=opts, providers=["CPUExecutionProvider"]
    )


def _one(config, spin, batch_size, repeat):
    """Best seconds of one configuration (run in a child process)."""
    mb = _model_bytes()
    X = np.random.default_rng(0).random((N, 784), dtype=np.float32)
    X4 = X.reshape(N, 1, 28, 28)
    bs = batch_size
    if config == "plain":
        sess = _session(mb, spin)

        def fn():
            for i in range(0, N, bs):
                sess.run(["logits"], {"x": X4[i : i + bs]})

    elif config in ("extractor", "extractor_out"):
        from sklearn_peek import LayerActivationExtractor

        ext = LayerActivationExtractor(
            mb, LAYERS, batch_size=bs, include_input=False, progress=False
        ).fit(X)
        buf = np.zeros((N, ext.n_features_out_), np.float32)
        kw = {"out": buf} if config == "extractor_out" else {}

        def fn():
            ext.transform(X, **kw)

    else:
        sess = _session(mb, "extractor", LAYERS)
        width = 6 * 14 * 14 + 16 * 5 * 5 + 120
        reused = np.zeros((N, width), np.float32)

        def fn():
            out = None
            if config == "copy_reused":
                out = reused
            elif config != "run3":
                out = np.empty((N, width), np.float32)
            for i in range(0, N, bs):
                parts = sess.run(LAYERS, {"x": X4[i : i + bs]})
                if out is None:
                    continue
                lo = 0
                for a in parts:
                    a = a.reshape(len(a), -1)
                    if config == "checks":
                        float(a.min()), float(a.max())
                    out[i : i + bs, lo : lo + a.shape[1]] = a
                    lo += a.shape[1]

    from bench_extract import _best  # warm-up call, then the best of ``repeat``

    return _best(repeat, fn)[0]


def _after_run(spin):
    """CPU seconds while idling 0.3 s after a run; a matrix product's time."""
    mb = _model_bytes()
    sess = _session(mb, spin)
    X4 = np.random.default_rng(0).random((1024, 1, 28, 28), dtype=np.float32)
    A = np.random.default_rng(1).random((600, 600))

    def run():
        for i in range(0, 1024, 128):
            sess.run(["logits"], {"x": X4[i : i + 128]})

    run()
    c0 = time.process_time()
    time.sleep(0.3)
    idle_cpu = time.process_time() - c0
    products = []
    for _ in range(15):
        run()
        t0 = time.perf_counter()
        for _ in range(3):
            A @ A
        products.append(time.perf_counter() - t0)
    return idle_cpu, float(np.median(products))


def _child(args):
    if args.child == "after":
        print(json.dumps(_after_run(args.spin)))
    else:
        print(json.dumps(_one(args.child, args.spin, args.batch_size, args.repeat)))


def _spawn(*argv):
    out = subprocess.run(
        [sys.executable, __file__, *argv], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spin", default="extractor", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)
    configs = [
        ("plain", "default"),
        ("plain", "off"),
        ("plain", "extractor"),
        ("run3", "extractor"),
        ("copy", "extractor"),
        ("copy_reused", "extractor"),
        ("checks", "extractor"),
        ("extractor", "extractor"),
        ("extractor_out", "extractor"),
    ]
    common = ["--repeat", str(args.repeat), "--batch-size", str(args.batch_size)]
    best = {}
    for _ in range(args.rounds):  # alternate, keep the best of each
        for config, spin in configs:
            t = _spawn("--child", config, "--spin", spin, *common)
            best[config, spin] = min(best.get((config, spin), t), t)
    base = best["plain", "default"]
    print(
        f"\nLeNet-5 ONNX, {N} images, batch {args.batch_size}, 3 layers without the "
        f"input block; best of {args.rounds} x {args.repeat}\n"
    )
    print("| configuration | spinning | s | vs plain, onnxruntime defaults |")
    print("|---|---|---:|---:|")
    for config, spin in configs:
        t = best[config, spin]
        print(f"| {config} | {spin} | {t:.4f} | {100 * (t / base - 1):+.1f}% |")
    print("\n| spinning | CPU s in 0.3 s idle after a run | A @ A x3 after a run: s |")
    print("|---|---:|---:|")
    for spin in ("default", "off", "extractor"):
        idle, prod = _spawn("--child", "after", "--spin", spin)
        print(f"| {spin} | {idle:.4f} | {prod:.4f} |")


if __name__ == "__main__":
    main()
