"""What ``analyze``'s default ``--max-iter`` costs and what it quiets.

Trains LeNet-5 for 2 epochs on the 1,437 training digits
(:class:`~sklearn_peek.studies.LeNetClassifier`), exports it to ONNX, and runs
``sklearn-peek analyze`` on all 1,797 digits with every other option at its
default (the layers of ``"auto"``: pool1, pool2, relu3, relu4), at
``--max-iter 200`` and ``500`` in alternation (``--repeats`` times each). It
prints, per setting, the sweep time (``timings_s["sweep"]`` of results.json),
the whole run, the selected ranks and how many (layer, rank) fits the
convergence warning names. ``docs/user_guide/cli.rst`` quotes it.

Usage::

    python benchmarks/bench_cli_max_iter.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from sklearn_peek import cli
from sklearn_peek._extract._onnx import torch_export_options
from sklearn_peek.studies import LeNetClassifier, digits_split


def _network(workdir):
    """LeNet-5 trained 2 epochs on the digits (studies.LeNetClassifier), as
    ONNX, and the 1,797 digit images as .npy."""
    data = digits_split()
    net = LeNetClassifier(epochs=2, random_state=0).fit(data.X_train, data.y_train)
    X = np.concatenate([data.X_train, data.X_test]).astype(np.float32)
    model, images = workdir / "lenet.onnx", workdir / "digits.npy"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.module_.eval(),
            (torch.from_numpy(X[:2]),),
            str(model),
            input_names=["x"],
            dynamic_axes={"x": {0: "n"}},
            **torch_export_options(),
        )
    np.save(images, X)
    return model, images


def _run(model, data, out, max_iter):
    code = cli.main(
        ["analyze", str(model), "--data", str(data), "--out", str(out), "-q",
         "--max-iter", str(max_iter)]
    )  # fmt: skip
    assert code == 0, code
    res = json.loads((out / "results.json").read_text())
    unconverged = sum(
        len(v)
        for w in res["warnings"]
        if w["kind"] == "convergence"
        for v in w["unconverged_ranks"].values()
    )
    times = res["timings_s"]
    return times["sweep"], times["total"], res["ranks"], unconverged


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, data = _network(tmp)
        rows = collections.defaultdict(list)
        for rep in range(args.repeats):
            for max_iter in (200, 500):
                out = tmp / f"out{max_iter}_{rep}"
                rows[max_iter].append(_run(model, data, out, max_iter))
    print("| --max-iter | sweep s | total s | fits that stopped at it | ranks |")
    print("|---|---|---|---|---|")
    for max_iter, runs in rows.items():
        sweeps = ", ".join(f"{r[0]:.2f}" for r in runs)
        totals = ", ".join(f"{r[1]:.2f}" for r in runs)
        print(f"| {max_iter} | {sweeps} | {totals} | {runs[0][3]} | {runs[0][2]} |")
    ratio = np.median([r[0] for r in rows[500]]) / np.median([r[0] for r in rows[200]])
    print(f"\nsweep time, 500 over 200 (medians): {ratio:.2f}")


if __name__ == "__main__":
    main()
