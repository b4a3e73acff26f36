"""The extractor's NaN/inf check of a layer block: min and max, or one pass.

Under ``nonneg="error"`` the extractor needs each layer's minimum (to refuse
negative values) and checks finiteness with a min and a max; under
``"relu"``, ``"split"`` and ``"shift"`` it needs no minimum and checks with
one pass, the dot product of the block with itself (finite unless the block
holds NaN or inf; an overflow is cleared by an exact check). This times both
on blocks of the sizes a LeNet-5 and a ResNet-style layer give, NumPy and
torch (CPU): the two alternately, best of ``--repeat`` rounds of 200 calls
(20 for the largest block), after one warm-up round each.

Usage::

    python benchmarks/bench_finite_check.py      # about 30 s on 2 cores
"""

from __future__ import annotations

import argparse
import platform

import numpy as np
import torch
from bench_extract import _best  # same folder: on sys.path as a script

from sklearn_peek._extract._base import _check_finite

SHAPES = {
    "LeNet pool1 (256 x 864)": (256, 864),
    "LeNet relu3 (256 x 120)": (256, 120),
    "conv map (256 x 3,456)": (256, 3456),
    "ResNet-style layer (2,000 x 16,384)": (2000, 16384),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}")
    print("| block | kind | min + max (us) | one pass (us) | ratio |")
    print("|---|---|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for label, shape in SHAPES.items():
        a = rng.random(shape, dtype=np.float32)
        number = 20 if a.size > 10**7 else 200
        for kind, block in (("numpy", a), ("torch", torch.from_numpy(a))):

            def calls(need_min, b=block, number=number):
                for _ in range(number):
                    _check_finite(b, "x", 0, need_min=need_min)

            # alternately, best of --repeat, per call
            both, one = (
                t / number
                for t in _best(args.repeat, lambda: calls(True), lambda: calls(False))
            )
            print(
                f"| {label} | {kind} | {both * 1e6:.1f} | {one * 1e6:.1f} "
                f"| {one / both:.2f} |"
            )


if __name__ == "__main__":
    main()
