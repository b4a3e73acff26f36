"""What a rank sweep on a GPU would launch, counted on the CPU.

Small fits on a GPU are bound by kernel launches and host synchronisations,
not by arithmetic. Both can be counted without a GPU: this script runs
``RankQualityScorer(device=torch.device("cpu"))`` (the torch code path) with
Triton's interpreter standing in for the GPU kernels (``TRITON_INTERPRET=1``,
set by the script), and counts

- the torch operations it issues (views excluded: each of the others is at
  least one kernel launch on a GPU),
- the Triton kernel launches (one each),
- the host synchronisations (``tests/_syncs.py``: values read back, data-
  dependent output sizes),

for the scorer with warm starts (its default) in lockstep and one chain
after the other (``sklearn_peek._rank._LOCKSTEP``), and without warm starts
(all ranks in one stacked run). Counts are exact and repeatable; times under
the interpreter mean nothing and are not reported.

One chain after the other computes the new components of each warm start on
the host, in NumPy: that work is not counted here, nor is the copy of the
training rows to the device that every one of its fits makes on a GPU; in
lockstep both happen on the device and are counted. Lockstep pays off with
many ranks per chain step (ranks 1-15: 5 chains, the longest of 7 ranks)
and not with a few (ranks 1-4: 2 chains, one of them a single rank).

Usage::

    python benchmarks/bench_launches.py              # about 4 minutes (2 cores)
    python benchmarks/bench_launches.py --ranks 15   # about 15 minutes
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# torch operators that only make views: no kernel launch on a GPU.
VIEWS = {
    "view", "_unsafe_view", "_reshape_alias", "reshape", "t", "transpose",
    "permute", "slice", "select", "expand", "as_strided", "alias", "detach",
    "unsqueeze", "squeeze", "diagonal", "unbind", "split", "split_with_sizes",
    "lift_fresh", "view_as_real", "view_as_complex",
}  # fmt: skip

CONFIGS = (
    ("warm starts, chains in lockstep", {"warm_start": True}, True),
    ("warm starts, one chain after the other", {"warm_start": True}, False),
    ("no warm starts, all ranks stacked", {"warm_start": False}, True),
)


def make_data(n, widths, rank, seed=0):
    """Non-negative float32 blocks of about ``rank`` components."""
    import numpy as np

    rng = np.random.RandomState(seed)
    W = rng.rand(n, rank)
    X = np.hstack([(1 + 4 * i) * W @ rng.rand(rank, w) for i, w in enumerate(widths)])
    return (X * rng.uniform(0.9, 1.1, size=X.shape)).astype(np.float32)


def count(config, args):
    """The counts of one configuration (run in this process)."""
    import numpy as np
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    sys.path.insert(0, str(ROOT / "tests"))
    from _syncs import count_host_syncs

    from sklearn_peek import RankQualityScorer, _gpu_kernels, _rank

    label, params, lockstep = CONFIGS[config]
    ops = collections.Counter()

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func._schema.name.split("::")[-1]
            if name not in VIEWS:
                ops["torch"] += 1
            return func(*args, **(kwargs or {}))

    kernels = ["sweep", "sweep_stacked"]
    kernels += ["weighted_residual", "weighted_residuals_stacked"]
    for name in kernels:
        real = getattr(_gpu_kernels, name)

        def launched(*a, _real=real, **k):
            ops["triton"] += 1
            return _real(*a, **k)

        setattr(_gpu_kernels, name, launched)
    X = make_data(args.n, (args.width, 2 * args.width), 5)
    blocks = [("input", args.width), ("layer", 2 * args.width)]
    _rank._LOCKSTEP = lockstep
    est = RankQualityScorer(
        blocks=blocks,
        ranks=range(1, args.ranks + 1),
        cv=3,
        max_iter=args.max_iter,
        random_state=0,
        device=torch.device("cpu"),
        **params,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with count_host_syncs() as syncs, Ops():
            est.fit(torch.from_numpy(X))
    return {
        "label": label,
        "torch_ops": ops["torch"],
        "triton_launches": ops["triton"],
        "host_syncs": sum(syncs.values()),
        "n_tasks": est.n_tasks_,
        "rank": est.rank_,
        "mean_score": np.asarray(est.cv_results_["mean_score"]).tolist(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=8, help="ranks 1..RANKS")
    parser.add_argument("--n", type=int, default=120, help="rows")
    parser.add_argument("--width", type=int, default=40, help="input columns")
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(count(args.child, args)))
        return None
    # Each configuration in a fresh process: Triton's interpreter must be
    # switched on before Triton is first used.
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    passed = [
        f"--ranks={args.ranks}",
        f"--n={args.n}",
        f"--width={args.width}",
        f"--max-iter={args.max_iter}",
    ]
    results = []
    for i in range(len(CONFIGS)):
        proc = subprocess.run(
            [sys.executable, __file__, f"--child={i}", *passed],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = results[1]
    print(
        f"\nRankQualityScorer, bcv, cv=3, ranks 1-{args.ranks}, {args.n} x "
        f"{3 * args.width} float32, max_iter={args.max_iter}, torch on the CPU "
        "with Triton's interpreter\n"
    )
    print("| scorer | tasks | torch ops | Triton launches | host syncs | rank_ |")
    print("|---|---:|---:|---:|---:|---|")
    for r in results:
        cells = [
            f"{r[k]} ({r[k] / base[k]:.2f}x)"
            for k in ("torch_ops", "triton_launches", "host_syncs")
        ]
        print(f"| {r['label']} | {r['n_tasks']} | {' | '.join(cells)} | {r['rank']} |")
    out = os.environ.get("OUT")
    if out:
        Path(out, "bench_launches.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
