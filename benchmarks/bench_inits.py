"""The NNDSVD starts of a rank sweep: stacked against one per rank.

Times the initialisations that :func:`sklearn_peek.fit_ranks` makes for a
sweep (ranks 1..``--max-rank``, ``init=None``, i.e. NNDSVDa from a randomized
SVD), built two ways on the same matrix: one ``CoupledNMF._initialize`` per
rank (what one fit per rank pays) and ``_coupled_nmf._initialize_ranks``
(the sketches of all ranks stacked: one product with X per step for all of
them; on a GPU, one batched CholeskyQR2 per step instead of a QR per rank).
Also reports the largest relative difference between the two sets of starts.
The two alternate ``--repeat`` times, after a warm-up of each.

Usage::

    python benchmarks/bench_inits.py                   # NumPy, then torch CPU
    python benchmarks/bench_inits.py --device cuda     # torch on a GPU only

``bench_gpu.py`` calls :func:`time_inits` for its sweep part.
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np

from sklearn_peek import CoupledNMF, _coupled_nmf, _solvers


def _sync(X):
    if getattr(X, "is_cuda", False):
        import torch

        torch.cuda.synchronize(X.device)


def time_inits(X, blocks, ranks, *, repeat=3):
    """Seconds of the starts of ``ranks`` one by one and stacked, and their gap.

    ``X`` is a NumPy array or a torch tensor (on its device). Returns a dict:
    ``one_by_one_s`` and ``stacked_s`` (lists, one per repeat) and
    ``max_rel_diff`` (the largest ``|W0 H0 - W0' H0'| / |W0 H0|`` over ranks,
    Frobenius norms). For torch also ``batched_one_by_one_s``: one rank at a
    time through the batched orthonormalization (``batched=True``), which a
    single rank no longer takes by default (a Householder QR per step is
    faster for one rank, on a GPU as on a CPU).
    """
    base = CoupledNMF(blocks=blocks, random_state=0)
    base.set_params(n_components=ranks[0])._validate_params()
    Xp, _slices, _w, d, _sq = base._prepare_fit(X)

    def models():
        out = [CoupledNMF(r, blocks=blocks, random_state=0) for r in ranks]
        for m in out:
            m._validate_params()
        return out

    def one_by_one():
        res = [m._initialize(Xp, None, None, d, False) for m in models()]
        _sync(Xp)
        return res

    def stacked():
        res = _coupled_nmf._initialize_ranks(models(), Xp, d)
        _sync(Xp)
        return res

    ref, got = one_by_one(), stacked()  # warm-up (and the comparison)
    gap = 0.0
    for (W0, H0, _), (W1, H1, _) in zip(ref, got):
        P0 = W0.astype(np.float64) @ H0.astype(np.float64)
        P1 = W1.astype(np.float64) @ H1.astype(np.float64)
        gap = max(gap, float(np.linalg.norm(P1 - P0) / np.linalg.norm(P0)))
    single, both = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        one_by_one()
        t1 = time.perf_counter()
        stacked()
        t2 = time.perf_counter()
        single.append(t1 - t0)
        both.append(t2 - t1)
    out = {"one_by_one_s": single, "stacked_s": both, "max_rel_diff": gap}
    if not isinstance(Xp, np.ndarray):  # torch: one rank forced through the batch
        sketch = _solvers.randomized_svd_weighted
        _solvers.randomized_svd_weighted = functools.partial(sketch, batched=True)
        try:
            one_by_one()  # warm-up
            out["batched_one_by_one_s"] = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                one_by_one()
                out["batched_one_by_one_s"].append(time.perf_counter() - t0)
        finally:
            _solvers.randomized_svd_weighted = sketch
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--p", type=int, default=2564)
    parser.add_argument("--max-rank", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--device", default=None, help="torch device only (default: NumPy, then CPU)"
    )
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    n, p = args.n, args.p
    X = rng.random((n, 30)) @ rng.random((30, p)) + 0.1 * rng.random((n, p))
    X = X.astype(np.float32)
    blocks = [("input", 784), ("layer", p - 784)]
    ranks = list(range(1, args.max_rank + 1))
    runs = [("numpy", X)]
    import torch

    if args.device is None:
        runs.append(("torch cpu", torch.from_numpy(X)))
    else:
        runs = [(f"torch {args.device}", torch.from_numpy(X).to(args.device))]
    print(f"{n} x {p} float32, ranks 1-{args.max_rank}, {args.repeat} runs")
    for name, Xb in runs:
        res = time_inits(Xb, blocks, ranks, repeat=args.repeat)
        pairs = ", ".join(
            f"{a:.3f}/{b:.3f} s ({a / b:.1f}x)"
            for a, b in zip(res["one_by_one_s"], res["stacked_s"])
        )
        print(
            f"{name}: one by one / stacked: {pairs}; starts differ by at most "
            f"{res['max_rel_diff']:.1e}"
        )
        if "batched_one_by_one_s" in res:
            times = ", ".join(f"{t:.3f}" for t in res["batched_one_by_one_s"])
            print(f"{name}: one by one, batched CholeskyQR2: {times} s")


if __name__ == "__main__":
    main()
