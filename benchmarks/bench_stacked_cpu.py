"""Stacked HALS fits on the CPU against one fit per rank (same starts).

Times :func:`sklearn_peek._solvers.fit_hals_batched` (all ranks in one stack,
what :func:`sklearn_peek.fit_ranks` runs) against one
:func:`~sklearn_peek._solvers.fit_hals` per rank, on a float32 matrix with
the same random starts, a fixed number of iterations (``tol=0``), the two
alternating ``--repeat`` times. Backs the CPU numbers in
``docs/user_guide/gpu.rst``.

Usage::

    python benchmarks/bench_stacked_cpu.py          # about 15 s on 2 cores
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from sklearn_peek import _solvers


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--p", type=int, default=2564)
    parser.add_argument("--max-rank", type=int, default=22)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    n, p = args.n, args.p
    X = rng.random((n, 30)) @ rng.random((30, p)) + 0.1 * rng.random((n, p))
    X = X.astype(np.float32)
    d = np.ones(p, np.float32)
    ranks = list(range(1, args.max_rank + 1))
    Ws = [rng.random((n, r)).astype(np.float32) for r in ranks]
    Hs = [rng.random((r, p)).astype(np.float32) for r in ranks]
    xnorm = float((X.astype(np.float64) ** 2).sum())
    kw = dict(xnorm=xnorm, max_iter=args.iters, tol=0)
    stacked, single = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            _solvers.fit_hals_batched(X, Ws, Hs, d, **kw)
            t1 = time.perf_counter()
            for W, H in zip(Ws, Hs):
                _solvers.fit_hals(X, W, H, d, **kw)
            t2 = time.perf_counter()
            stacked.append(t1 - t0)
            single.append(t2 - t1)
    print(
        f"{n} x {p} float32, ranks 1-{args.max_rank} ({sum(ranks)} stacked rows), "
        f"{args.iters} iterations, {args.repeat} runs"
    )
    for s, o in zip(stacked, single):
        print(f"stacked {s:.3f} s, one fit per rank {o:.3f} s, ratio {s / o:.2f}")


if __name__ == "__main__":
    main()
