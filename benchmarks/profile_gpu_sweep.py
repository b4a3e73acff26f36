"""Where the time of a stacked rank sweep (``fit_ranks``) goes, on a GPU.

One device call. On the small matrix of ``bench_gpu.py`` (10,000 x 2,564
float32, ranks 1-30, ``max_iter=100``) it

1. times the warm sweep three times (wall clock, the device waited for);
2. times each phase of ``_fit_stacked`` (validation, initialisations, the
   solver run, the per-model finish) and each step inside the solver run
   (products with X, Gram matrices, HALS sweeps, objectives and residuals,
   re-stacking when ranks leave), the device waited for after every step:
   the steps' sum exceeds the plain run by the waits this adds;
3. runs the sweep once under ``torch.profiler`` and prints the kernels and
   host operations that took the most time;
4. times the same sweep as ``bench_gpu.py`` does on the CPU (joblib,
   ``n_jobs=<cores>``, one fit per rank; workers started before timing), for
   the ratio in the same run;
5. times one stacked residual call (all ranks) with ``tl.dot`` tiles and
   with rank-one updates, and RankQualityScorer (bcv, ``cv=3``) on the
   device, cold and warm starts (unless ``--skip-scorer``);
6. times scikit-learn's ``NMF(solver="cd")`` per iteration on the large
   matrix (``bench_gpu.sklearn_per_iteration``), unless ``--skip-sklearn``.

``--cpu-smoke`` runs it small with torch on the CPU (checks the script).
Writes ``$OUT/profile_gpu_sweep.json`` when ``OUT`` is set.
"""

import argparse
import functools
import json
import os
import sys
import time
import warnings
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_gpu import Timer, cpu_sweep, make_matrix, sklearn_per_iteration

from sklearn_peek import CoupledNMF, _coupled_nmf, _solvers
from sklearn_peek._coupled_nmf import fit_ranks


def _sweep(X, blocks, device, ranks, max_iter):
    est = CoupledNMF(blocks=blocks, random_state=0, max_iter=max_iter, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_ranks(est, X, ranks)[0]


class _Steps:
    """Wraps functions of a module (or methods of a class) with timers."""

    def __init__(self, sync):
        self.sync = sync
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self._undo = []

    def wrap(self, owner, name, label):
        orig = getattr(owner, name)

        @functools.wraps(orig)
        def timed(*args, **kwargs):
            self.sync()
            t0 = time.perf_counter()
            try:
                return orig(*args, **kwargs)
            finally:
                self.sync()
                self.seconds[label] += time.perf_counter() - t0
                self.calls[label] += 1

        setattr(owner, name, timed)
        self._undo.append((owner, name, orig))

    def undo(self):
        for owner, name, orig in reversed(self._undo):
            setattr(owner, name, orig)
        self._undo.clear()


def phase_times(X, blocks, device, ranks, max_iter, timer):
    """Seconds per phase of ``_fit_stacked`` and per step of the solver run."""
    outer, inner = _Steps(timer.sync), _Steps(timer.sync)
    outer.wrap(CoupledNMF, "_prepare_fit", "validate X, blocks, weights")
    outer.wrap(_coupled_nmf, "_initialize_ranks", "initialisations (stacked)")
    outer.wrap(_solvers, "fit_hals_batched", "solver run (fit_hals_batched)")
    outer.wrap(CoupledNMF, "_finish_fit", "finish each model (errors, copies)")
    try:
        t_outer, _ = timer.wall(lambda: _sweep(X, blocks, device, ranks, max_iter))
    finally:
        outer.undo()
    for name, label in [
        ("_h_xt", "product H X^T"),
        ("_w_x", "product W^T X"),
        ("_block_gram", "Gram matrices (masked)"),
        ("_hals_sweep", "HALS sweeps"),
        ("_segment_sums64", "objective sums + read back"),
        ("_stack_layout", "re-stacking layout"),
        ("_take", "re-stacking take rows"),
        ("_residual_sums", "residuals, eager"),
    ]:
        inner.wrap(_solvers, name, label)
    kernels = _solvers._gpu_kernels
    inner.wrap(kernels, "weighted_residuals_stacked", "residuals, stacked kernel")
    try:
        t_inner, models = timer.wall(lambda: _sweep(X, blocks, device, ranks, max_iter))
    finally:
        inner.undo()
    return {
        "outer_wall_s": t_outer,
        "outer": dict(outer.seconds),
        "inner_wall_s": t_inner,
        "inner": dict(inner.seconds),
        "inner_calls": dict(inner.calls),
        "n_iter": [int(m.n_iter_) for m in models],
    }


def profile(X, blocks, device, ranks, max_iter, timer, top=20):
    """One sweep under torch.profiler: top device kernels and host operations."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    acts = [ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(ProfilerActivity.CUDA)
    with tprofile(activities=acts) as prof:
        wall, _ = timer.wall(lambda: _sweep(X, blocks, device, ranks, max_iter))
    events = prof.key_averages()
    dev_attr = "self_device_time_total"
    if not hasattr(events[0], dev_attr):
        dev_attr = "self_cuda_time_total"
    rows_dev = sorted(events, key=lambda e: getattr(e, dev_attr), reverse=True)
    rows_cpu = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)

    def row(e):
        return {
            "name": e.key[:90],
            "calls": int(e.count),
            "device_ms": getattr(e, dev_attr) / 1e3,
            "self_cpu_ms": e.self_cpu_time_total / 1e3,
        }

    del torch
    return {
        "wall_s": wall,
        "top_device": [row(e) for e in rows_dev[:top]],
        "top_host": [row(e) for e in rows_cpu[:top]],
    }


def stacked_residual_ab(X, ranks, device, timer, repeat=5):
    """Milliseconds of one stacked residual call (all ``ranks``), per variant."""
    import torch

    from sklearn_peek import _gpu_kernels

    if not _gpu_kernels.residual_usable(X, X[:1], X[:1], X[0], stacked=True):
        return {}
    n, p = X.shape
    g = torch.Generator(device=X.device).manual_seed(1)
    Wt = torch.rand(sum(ranks), n, generator=g, device=X.device)
    H = torch.rand(sum(ranks), p, generator=g, device=X.device) / len(ranks)
    d = torch.rand(p, generator=g, device=X.device)
    layout = _gpu_kernels.stack_layout(ranks, X)
    out, values = {}, {}
    for dot in (True, False):

        def call(dot=dot):
            return _gpu_kernels.weighted_residuals_stacked(X, Wt, H, d, layout, dot=dot)

        values[dot] = call().double()
        best = min(timer.wall(call)[0] for _ in range(repeat))
        out["dot_ms" if dot else "rank_one_ms"] = 1e3 * best
    rel = ((values[True] - values[False]).abs() / values[False].abs()).max()
    out["max_rel_diff"] = float(rel)
    return out


def scorer_times(X, blocks, device, ranks, max_iter, timer):
    """Seconds of RankQualityScorer on the device (bcv, cv=3): cold sweeps
    (``warm_start=False``) and the defaults (warm starts), the better of two
    runs each (the first compiles kernels)."""
    from sklearn_peek import RankQualityScorer

    kw = dict(blocks=blocks, ranks=ranks, cv=3, max_iter=max_iter, random_state=0)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, warm in (("cold_starts", False), ("warm_starts", True)):
            times = []
            for _ in range(2):
                est = RankQualityScorer(device=device, warm_start=warm, **kw)
                times.append(timer.wall(lambda est=est: est.fit(X))[0])
            out[f"{label}_s"] = min(times)
            out[f"{label}_rank"] = est.rank_
            out[f"{label}_fit_time_total_s"] = float(est.fit_time_total_)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true")
    parser.add_argument("--skip-sklearn", action="store_true")
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-scorer", action="store_true")
    args = parser.parse_args(argv)
    import torch

    if args.cpu_smoke:
        device = torch.device("cpu")
        torch.set_num_threads(1)
        n, blocks, ranks, max_iter = 600, [("input", 60), ("layer", 140)], 6, 20
        large = (600, [("input", 300), ("layer", 2700)])
    else:
        if not torch.cuda.is_available():
            sys.exit("profile_gpu_sweep.py needs a CUDA GPU (or pass --cpu-smoke).")
        device = torch.device("cuda")
        n, blocks, ranks, max_iter = 10_000, [("input", 784), ("layer", 1_780)], 30, 100
        large = (10_000, [("input", 3_072), ("layer", 65_536)])
    ranks = list(range(1, ranks + 1))

    timer = Timer(device)
    res = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        res["device"] = torch.cuda.get_device_name(0)
    X = make_matrix(n, blocks, 20, device)
    res["cold_s"] = timer.wall(lambda: _sweep(X, blocks, device, ranks, max_iter))[0]
    res["warm_s"] = [
        timer.wall(lambda: _sweep(X, blocks, device, ranks, max_iter))[0]
        for _ in range(3)
    ]
    print(f"cold {res['cold_s']:.3f} s, warm {res['warm_s']}", flush=True)
    res["phases"] = phase_times(X, blocks, device, ranks, max_iter, timer)
    print(json.dumps(res["phases"], indent=1), flush=True)
    res["profile"] = profile(X, blocks, device, ranks, max_iter, timer)
    prof = res["profile"]
    # Device times of the operators (aten::mm, ...) include their kernels,
    # which are listed too: the rows do not add up to a total.
    print(f"profiled wall {prof['wall_s']:.3f} s (the profiler slows the host)")
    for title, key in (("device", "top_device"), ("host", "top_host")):
        print(f"\n| top by {title} time | calls | device ms | self host ms |")
        print("|---|---|---|---|")
        for r in prof[key]:
            print(
                f"| {r['name']} | {r['calls']} | {r['device_ms']:.2f} "
                f"| {r['self_cpu_ms']:.2f} |"
            )
    res["stacked_residual"] = stacked_residual_ab(X, ranks, device, timer)
    print(f"stacked residual, ranks 1-{ranks[-1]}: {res['stacked_residual']}")
    if not args.skip_scorer:
        res["scorer"] = scorer_times(X, blocks, device, ranks, max_iter, timer)
        print(f"scorer on the device: {res['scorer']}", flush=True)
    if not args.skip_cpu:
        start, seconds, _ = cpu_sweep(X, blocks, ranks, max_iter, os.cpu_count())
        res["cpu"] = {"workers_start_s": start, "cpu_s": seconds}
        best = min(res["warm_s"])
        res["speedup_best_warm"] = res["cpu"]["cpu_s"] / best
        print(
            f"\nCPU sweep n_jobs={os.cpu_count()}: {res['cpu']['cpu_s']:.2f} s "
            f"(workers started in {res['cpu']['workers_start_s']:.2f} s); "
            f"best warm device sweep {best:.3f} s: {res['speedup_best_warm']:.1f}x",
            flush=True,
        )
    if not args.skip_sklearn:
        del X
        Xl = make_matrix(large[0], large[1], 20, device)
        res["sklearn"] = sklearn_per_iteration(Xl, 20, n_iter=3)
        print(f"sklearn cd per iteration: {res['sklearn']}", flush=True)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "profile_gpu_sweep.json"), "w") as fh:
            json.dump(res, fh, indent=1)
    return res


if __name__ == "__main__":
    main()
