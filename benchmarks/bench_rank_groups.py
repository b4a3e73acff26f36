"""How many ranks per stacked task a cold rank sweep should use on the host.

``RankQualityScorer(warm_start=False)`` stacks the ranks of a (layer, fold)
in groups (``sklearn_peek._rank._rank_groups``): a bigger group shares more
passes over X (less work in all), a smaller one leaves more tasks for the
workers (better balance). This script times every task of a bcv sweep
(ranks 1..30, 3 folds) in this process, one BLAS thread, for several group
sizes, then computes the wall time ``W`` workers would need when the tasks
are handed out heaviest first (as the scorer orders them), assuming a task
takes as long on a busy machine as alone (memory-bandwidth contention
between workers is not modelled).

Usage::

    python benchmarks/bench_rank_groups.py          # about 4 minutes on 2 cores
    python benchmarks/bench_rank_groups.py --quick  # seconds
"""

from __future__ import annotations

import argparse
import heapq
import os
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")

from bench_rank_sweep import make_data  # same folder: on sys.path as a script
from threadpoolctl import threadpool_limits

from sklearn_peek import _criteria
from sklearn_peek._rank import _batched_task, _rank_groups

WORKERS = (1, 2, 4, 8, 16, 32)


def wall(durations, workers):
    """Finish time of the tasks on ``workers``, heaviest first, each to the
    worker that frees up first."""
    loads = [0.0] * workers
    for d in sorted(durations, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + d)
    return max(loads)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, seconds")
    args = parser.parse_args(argv)
    if args.quick:
        n, widths, ranks, sizes = 300, (64, 256), list(range(1, 11)), (1, 3, 10)
    else:
        n, widths, ranks, sizes = 1500, (784, 2704), list(range(1, 31)), (1, 3, 5, 30)
    X = make_data(n, widths, 12)
    blocks = [("input", widths[0]), ("conv1", widths[1])]
    params = {
        "block_weights": "norm",
        "solver": "hals",
        "init": None,
        "max_iter": 200,
        "tol": 1e-4,
        "device": None,
    }
    folds = _criteria.row_folds(n, 3, 5)
    rows = []
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for size in sizes:
            durations = []
            for train, test in folds:
                for group in _rank_groups(ranks, size):
                    t0 = time.perf_counter()
                    _batched_task(X, None, blocks, train, test, group, 7, params)
                    durations.append(time.perf_counter() - t0)
            rows.append((size, durations))
    print(
        f"cold bcv sweep: X {n} x ({' + '.join(map(str, widths))}) float32, ranks "
        f"{ranks[0]}..{ranks[-1]}, 3 folds, one BLAS thread; modelled wall time "
        "(s) for W workers, tasks heaviest first\n"
    )
    print(
        "| ranks per task | tasks | work (s) | "
        + " | ".join(f"W={w}" for w in WORKERS)
        + " |"
    )
    print("|---:|---:|---:|" + "---:|" * len(WORKERS))
    for size, durations in rows:
        cells = " | ".join(f"{wall(durations, w):.1f}" for w in WORKERS)
        print(f"| {size} | {len(durations)} | {sum(durations):.1f} | {cells} |")
    base = dict(rows)[1]
    print("\nratio to one rank per task (below 1: faster)\n")
    print("| ranks per task | " + " | ".join(f"W={w}" for w in WORKERS) + " |")
    print("|---:|" + "---:|" * len(WORKERS))
    for size, durations in rows:
        cells = " | ".join(f"{wall(durations, w) / wall(base, w):.2f}" for w in WORKERS)
        print(f"| {size} | {cells} |")


if __name__ == "__main__":
    main()
