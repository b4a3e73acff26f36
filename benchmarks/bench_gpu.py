"""Benchmark: CoupledNMF on a GPU (torch) against the CPU, in one device call.

What it does, in order (one markdown table per part, and a JSON file
``$OUT/bench_gpu.json`` when the environment variable ``OUT`` is set):

1. Correctness: a slice of the data (2,000 rows) factorized on the GPU and
   on the CPU (NumPy, float32) from the same ``random_state``: relative
   difference of the reconstruction errors and of the products ``W @ H``.
2. Per-iteration times on the GPU (CUDA events, after warm-up, objective
   and stopping test included) of the HALS and MU solvers (HALS with the
   Triton kernels of ``sklearn_peek._gpu_kernels`` and without them), for the issue's
   two matrices: 10,000 x 68,608 float32 (CIFAR pixels + a ResNet-style
   layer, blocks 3,072 + 65,536) and 10,000 x 2,564 (blocks 784 + 1,780),
   rank 20; against the "floor" (the two products with X of one iteration,
   ``X.T @ W`` and ``X @ H.T``, timed alone), and the time to tolerance of
   ``CoupledNMF(device=...)`` (``tol=1e-4``, init included).
3. scikit-learn's ``NMF(solver="cd")`` per iteration on all CPU cores for the
   large matrix (``init="custom"`` from the same start, timed as the
   difference between ``max_iter=k+1`` and ``max_iter=1`` runs).
4. A 30-rank sweep (ranks 1..30, ``max_iter=100``) of the small matrix:
   sequential on the GPU against ``joblib.Parallel(n_jobs=<CPU cores>)``
   of NumPy fits (one BLAS thread per worker).
5. ``RankQualityScorer`` (bcv, ``cv=3``, ``warm_start=False``, the same
   ranks and ``max_iter``) of the small matrix on the GPU (stacked ranks)
   against ``n_jobs=<CPU cores>`` on the CPU.
6. A Pipeline (LeNet-5 extractor on 10,000 random 28x28 images, then a
   rank-20 CoupledNMF, 50 iterations) on the GPU with the activations kept on
   the device (``output="torch"``) against the same with a round trip through
   host memory (``output="numpy"``).

The matrices are generated on the device (non-negative, rank-20 structure
plus ReLU sparsity and noise). Targets from issue 5: large case <= 1.5x the
floor per iteration for the default solver (HALS); small case <= 0.5 ms per
iteration; the sweep >= 20x faster than the CPU sweep.

Run ``python benchmarks/bench_gpu.py`` on a CUDA machine (about 2-4 minutes
on an H100), or ``python benchmarks/bench_gpu.py --cpu-smoke`` anywhere: the
same steps with small sizes, torch on the CPU standing in for the GPU (to
check that the script works; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import sys
import time
import warnings

import numpy as np

import sklearn_peek
from sklearn_peek import CoupledNMF, _gpu_kernels, _solvers


def _torch():
    import torch

    return torch


# ------------------------------------------------------------------ timers
class Timer:
    """Wall-clock timing that waits for the device (CUDA events on a GPU)."""

    def __init__(self, device):
        self.torch = _torch()
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def __call__(self, fn, repeat=1):
        """Seconds of one call of fn (minimum over ``repeat``), and its result."""
        best, out = float("inf"), None
        for _ in range(repeat):
            self.sync()
            if self.cuda:
                start = self.torch.cuda.Event(enable_timing=True)
                stop = self.torch.cuda.Event(enable_timing=True)
                start.record()
                out = fn()
                stop.record()
                self.sync()
                sec = start.elapsed_time(stop) / 1e3
            else:
                t0 = time.perf_counter()
                out = fn()
                sec = time.perf_counter() - t0
            best = min(best, sec)
        return best, out

    def wall(self, fn):
        """Wall-clock seconds of one call of fn (host work included), its result."""
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t0, out


# ------------------------------------------------------------------- data
def make_matrix(n, blocks, rank, device, *, seed=0):
    """Non-negative float32 (n x sum(blocks)) with rank-``rank`` structure.

    Every block is ``relu(W @ G_b - c_b)`` plus 1% noise, where ``W`` is
    shared: a sparse-ish, activation-like coupled matrix, generated on
    ``device`` in chunks of rows.
    """
    torch = _torch()
    g = torch.Generator(device=device).manual_seed(seed)
    W = torch.rand(n, rank, generator=g, device=device) ** 2
    p = sum(s for _, s in blocks)
    X = torch.empty(n, p, device=device, dtype=torch.float32)
    start = 0
    for i, (_, size) in enumerate(blocks):
        G = torch.rand(rank, size, generator=g, device=device) * (1 + 4 * i)
        for s in range(0, n, 2048):
            part = W[s : s + 2048] @ G
            cut = 0.3 * part.mean()
            noise = (
                0.01 * part.mean() * torch.rand(part.shape, generator=g, device=device)
            )
            X[s : s + 2048, start : start + size] = (part - cut).clamp_(min=0) + noise
        start += size
    return X


def kernels(on):
    """Run with the Triton kernels (the default on a GPU) or without them."""
    return contextlib.nullcontext() if on else _gpu_kernels.turned_off()


# ---------------------------------------------------------------- parts
def check_against_cpu(X, blocks, rank, device, *, rows, max_iter):
    """GPU vs NumPy on a row slice; the same random_state, float32."""
    Xs = X[:rows].contiguous()
    kw = dict(n_components=rank, blocks=blocks, random_state=0, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gpu = CoupledNMF(device=device, **kw)
        W_g = gpu.fit_transform(Xs)
        Xh = Xs.cpu().numpy()
        cpu = CoupledNMF(**kw)
        W_c = cpu.fit_transform(Xh)
    W_g = W_g.cpu().numpy().astype(np.float64)
    P_g = W_g @ gpu.components_.astype(np.float64)
    P_c = W_c.astype(np.float64) @ cpu.components_.astype(np.float64)
    return {
        "shape": list(Xh.shape),
        "iterations": [int(gpu.n_iter_), int(cpu.n_iter_)],
        "err_gpu": gpu.reconstruction_err_,
        "err_cpu": cpu.reconstruction_err_,
        "err_rel_diff": abs(gpu.reconstruction_err_ - cpu.reconstruction_err_)
        / cpu.reconstruction_err_,
        "WH_rel_diff": float(np.linalg.norm(P_g - P_c) / np.linalg.norm(P_c)),
    }


def _start(X, blocks, rank, d):
    """NNDSVDa-like start of the weighted problem (the estimator's init)."""
    model = CoupledNMF(rank, blocks=blocks, random_state=0)
    dn = d.cpu().numpy().astype(np.float32)
    W0, H0, _ = model._initialize(X, None, None, dn, False)
    return _solvers._from_host(W0, X), _solvers._from_host(H0, X)


def per_iteration(X, blocks, rank, device, *, n_iter, repeat):
    """Seconds per iteration of HALS and MU and of the two products alone."""
    torch = _torch()
    timer = Timer(device)
    sizes = [s for _, s in blocks]
    sq = _solvers.column_sums64(X)
    bounds = np.cumsum([0, *sizes])
    weights = [1.0 / sq[a:b].sum() for a, b in itertools.pairwise(bounds)]
    d = torch.cat(
        [torch.full((s,), w, device=device) for s, w in zip(sizes, weights)]
    ).to(X.dtype)
    xnorm = float(
        sum(w * sq[a:b].sum() for w, a, b in zip(weights, bounds, bounds[1:]))
    )
    W0, H0 = _start(X, blocks, rank, d)
    out = {}

    def products():
        Wt = W0.T.contiguous()
        _solvers._w_x(Wt, X)
        _solvers._h_xt(H0 * d, X)

    products()
    t, _ = timer(products, repeat=repeat)
    out["floor_ms"] = 1e3 * t
    # tol=0: the objective from the Gram products only. tol=1e-12 (never
    # met): the objective from the explicit residual, one more pass over X,
    # which the stopping rule uses in float32 once the fit is good (relative
    # squared error below about 1%): the real cost per iteration near the end.
    # "hals_penalized": l1 and l2 penalties on H, which reach the sweeps as
    # vectors over the columns (penalty / d_j); compare with "hals" to see
    # what they cost (they once cost two host synchronisations per iteration).
    pen = {"l1_H": 1e-4 * xnorm / X.shape[1], "l2_H": 1e-4 * xnorm / X.shape[1]}
    runs = (
        ("hals", _solvers.fit_hals, 0.0, True, {}),
        ("hals_exact", _solvers.fit_hals, 1e-12, True, {}),
        ("hals_penalized", _solvers.fit_hals, 0.0, True, pen),
        ("hals_eager", _solvers.fit_hals, 0.0, False, {}),
        ("hals_exact_eager", _solvers.fit_hals, 1e-12, False, {}),
        ("mu", _solvers.fit_mu, 0.0, True, {}),
    )
    for name, fit, tol, on, extra in runs:

        def run(k, fit=fit, tol=tol, extra=extra):
            return fit(X, W0, H0, d, xnorm=xnorm, max_iter=k, tol=tol, **extra)

        with kernels(on):
            run(2)  # warm-up (allocator, cuBLAS handles, kernel compilation)
            t1, _ = timer(lambda run=run: run(1), repeat=repeat)
            tk, _ = timer(lambda run=run: run(1 + n_iter), repeat=repeat)
        out[f"{name}_ms"] = 1e3 * (tk - t1) / n_iter
        print(f"  {name}: {out[f'{name}_ms']:.3f} ms/iteration", flush=True)
    model = CoupledNMF(rank, blocks=blocks, random_state=0, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["to_tol_s"], _ = timer.wall(lambda: model.fit(X))
    out["to_tol_iter"] = int(model.n_iter_)
    out["to_tol_err"] = model.reconstruction_err_
    return out


def scorer_sweep(X, blocks, device, *, ranks, max_iter, n_jobs):
    """RankQualityScorer (bcv, cv=3, no warm starts): GPU vs CPU n_jobs."""
    from sklearn_peek import RankQualityScorer

    kw = dict(
        blocks=blocks,
        ranks=ranks,
        cv=3,
        warm_start=False,
        max_iter=max_iter,
        random_state=0,
    )
    timer = Timer(device)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label in ("gpu_cold", "gpu"):
            gpu = RankQualityScorer(device=device, **kw)
            out[f"{label}_s"], _ = timer.wall(lambda gpu=gpu: gpu.fit(X))
            print(f"  scorer {label}: {out[f'{label}_s']:.2f} s", flush=True)
        Xh = X.cpu().numpy()
        out["cpu_workers_start_s"] = _warm_workers(blocks, n_jobs)
        cpu = RankQualityScorer(n_jobs=n_jobs, **kw)
        out["cpu_s"], _ = timer.wall(lambda: cpu.fit(Xh))
    out["n_jobs"] = n_jobs
    out["speedup"] = out["cpu_s"] / out["gpu_s"]
    # The solver runs of the sweep; the rest of gpu_s is mostly the held-out
    # scoring (one solve of W per layer, fold and rank), data moves and setup.
    out["gpu_fit_time_total_s"] = float(gpu.fit_time_total_)
    out["rank_gpu"] = gpu.rank_
    out["rank_cpu"] = cpu.rank_
    a = np.asarray(gpu.cv_results_["mean_score"])
    b = np.asarray(cpu.cv_results_["mean_score"])
    out["max_score_abs_diff"] = float(np.max(np.abs(a - b)))
    return out


def scorer_warm_sweep(X, blocks, device, *, ranks, max_iter, n_jobs):
    """RankQualityScorer with its defaults (bcv, cv=3, warm starts): the
    chains in lockstep on the GPU, one chain after the other on the GPU (the
    code before lockstep), and CPU n_jobs."""
    from sklearn_peek import RankQualityScorer, _rank

    kw = dict(blocks=blocks, ranks=ranks, cv=3, max_iter=max_iter, random_state=0)
    timer = Timer(device)
    out = {}
    fitted = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The first runs compile kernels (not the same ones for the two
        # paths): the better of two runs of each.
        for _ in range(2):
            for label, lockstep in (("gpu", True), ("gpu_chains", False)):
                _rank._LOCKSTEP = lockstep
                try:
                    est = RankQualityScorer(device=device, **kw)
                    t, _ = timer.wall(lambda est=est: est.fit(X))
                finally:
                    _rank._LOCKSTEP = True
                out[f"{label}_s"] = min(out.get(f"{label}_s", t), t)
                fitted[label] = est
                print(f"  warm scorer {label}: {t:.2f} s", flush=True)
        Xh = X.cpu().numpy()
        _warm_workers(blocks, n_jobs)
        cpu = RankQualityScorer(n_jobs=n_jobs, **kw)
        out["cpu_s"], _ = timer.wall(lambda: cpu.fit(Xh))
    out["n_jobs"] = n_jobs
    out["speedup"] = out["cpu_s"] / out["gpu_s"]
    out["lockstep_gain"] = out["gpu_chains_s"] / out["gpu_s"]
    out["rank_gpu"] = fitted["gpu"].rank_
    out["rank_gpu_chains"] = fitted["gpu_chains"].rank_
    out["rank_cpu"] = cpu.rank_
    a = np.asarray(fitted["gpu"].cv_results_["mean_score"])
    b = np.asarray(cpu.cv_results_["mean_score"])
    c = np.asarray(fitted["gpu_chains"].cv_results_["mean_score"])
    out["max_score_abs_diff"] = float(np.max(np.abs(a - b)))
    out["max_score_abs_diff_chains"] = float(np.max(np.abs(a - c)))
    return out


def residual_configs(X, rank, device):
    """Milliseconds of the one-pass residual kernel per tile shape and variant."""
    torch = _torch()
    if device.type != "cuda":
        return []
    timer = Timer(device)
    n, p = X.shape
    g = torch.Generator(device=device).manual_seed(1)
    Wt = torch.rand(rank, n, generator=g, device=device)
    H = torch.rand(rank, p, generator=g, device=device)
    d = torch.rand(p, generator=g, device=device)
    out = []
    for dot, block, warps in itertools.product(
        (True, False), ((64, 128), (128, 128), (64, 256), (128, 64)), (4, 8)
    ):

        def run(dot=dot, block=block, warps=warps):
            return float(  # the read waits for the kernel
                _gpu_kernels.weighted_residual(
                    X, Wt, H, d, block=block, num_warps=warps, dot=dot
                )
            )

        try:
            run()
            t, val = timer(run, repeat=5)
        except Exception as exc:  # a tile that does not fit: report, go on
            out.append({"dot": dot, "block": block, "warps": warps, "error": str(exc)})
            continue
        out.append(
            {"dot": dot, "block": block, "warps": warps, "ms": 1e3 * t, "value": val}
        )
        print(f"  residual {out[-1]}", flush=True)
    return out


def sklearn_per_iteration(X, rank, *, n_iter):
    """scikit-learn NMF(cd) seconds per iteration on the host, all cores."""
    from sklearn.decomposition import NMF

    Xh = X.cpu().numpy()
    rng = np.random.RandomState(0)
    avg = float(np.sqrt(Xh.mean() / rank))
    W0 = (avg * rng.rand(Xh.shape[0], rank)).astype(np.float32)
    H0 = (avg * rng.rand(rank, Xh.shape[1])).astype(np.float32)

    def run(k):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            NMF(rank, solver="cd", init="custom", max_iter=k, tol=0.0).fit_transform(
                Xh, W=W0, H=H0
            )
        return time.perf_counter() - t0

    # The difference of a 1-iteration and a (1 + n_iter)-iteration fit, each
    # the best of two after an untimed warm-up: a single cold pair once gave
    # a negative time (the first fit paid the threads' and pages' start-up).
    run(1)
    t1 = min(run(1) for _ in range(2))
    tk = min(run(1 + n_iter) for _ in range(2))
    return {"sklearn_cd_ms": 1e3 * (tk - t1) / n_iter, "cores": os.cpu_count()}


def _warm_workers(blocks, n_jobs):
    """Start joblib's n_jobs worker processes (and their imports) untimed.

    Seconds it took. Without this the first timed CPU sweep would include the
    workers' start-up (seconds with 16 workers importing torch).
    """
    from joblib import Parallel, delayed

    Xs = np.random.default_rng(0).random((64, sum(s for _, s in blocks)))
    t0 = time.perf_counter()
    Parallel(n_jobs=n_jobs)(
        delayed(_cpu_fit)(Xs.astype(np.float32), blocks, 1, 2) for _ in range(n_jobs)
    )
    return time.perf_counter() - t0


def _cpu_fit(X, blocks, rank, max_iter):
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = CoupledNMF(rank, blocks=blocks, random_state=0, max_iter=max_iter).fit(X)
    return m.reconstruction_err_


def _device_sweep(X, blocks, device, ranks, max_iter):
    def sweep():
        return [
            CoupledNMF(
                r, blocks=blocks, random_state=0, max_iter=max_iter, device=device
            )
            .fit(X)
            .reconstruction_err_
            for r in ranks
        ]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Timer(device).wall(sweep)


def _batched_sweep(X, blocks, device, ranks, max_iter):
    from sklearn_peek._coupled_nmf import fit_ranks

    est = CoupledNMF(blocks=blocks, random_state=0, max_iter=max_iter, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t, (models, _) = Timer(device).wall(lambda: fit_ranks(est, X, ranks))
    return t, [m.reconstruction_err_ for m in models]


def _init_costs(X, blocks, ranks):
    """Seconds of the sweep's initialisations: one per rank, and stacked.

    :func:`bench_inits.time_inits` (best of 3): one ``_initialize`` per rank
    (what one fit per rank pays) against ``_initialize_ranks`` (what
    ``fit_ranks`` runs), and the largest relative gap between their starts.
    Before the stacking, the 30 initialisations took about 0.45 s of a 1.06 s
    stacked sweep on an H100.
    """
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_inits import time_inits

    res = time_inits(X, blocks, list(ranks), repeat=3)
    batched_single = min(res.get("batched_one_by_one_s", [float("nan")]))
    return (
        min(res["one_by_one_s"]),
        min(res["stacked_s"]),
        res["max_rel_diff"],
        batched_single,
    )


def cpu_sweep(X, blocks, ranks, max_iter, n_jobs):
    """The CPU baseline of a sweep: one NumPy fit per rank, joblib ``n_jobs``.

    The workers are started first, untimed. Returns ``(seconds to start the
    workers, seconds of the sweep, the fits' errors)``.
    """
    from joblib import Parallel, delayed

    Xh = X.cpu().numpy()
    t_start = _warm_workers(blocks, n_jobs)
    t0 = time.perf_counter()
    errs = Parallel(n_jobs=n_jobs)(
        delayed(_cpu_fit)(Xh, blocks, r, max_iter) for r in ranks
    )
    return t_start, time.perf_counter() - t0, errs


def rank_sweep(X, blocks, device, *, ranks, max_iter, n_jobs):
    """Sequential sweep on the device vs joblib n_jobs NumPy sweep on the host.

    The device sweep runs twice: the first run includes compiling the Triton
    kernels for every rank's tile size (once per process and size: Triton
    also caches them on disk), the second is what later sweeps cost.
    """

    t_cold, _ = _device_sweep(X, blocks, device, ranks, max_iter)
    t_gpu, errs_gpu = _device_sweep(X, blocks, device, ranks, max_iter)
    # One fit's fixed cost: initialisation (randomized SVD, NNDSVD on the
    # host), setup and the final per-block errors, with one iteration.
    t_fixed, _ = _device_sweep(X, blocks, device, ranks, 1)
    # All ranks stacked in one solver run per group (fit_ranks).
    t_batched_cold, _ = _batched_sweep(X, blocks, device, ranks, max_iter)
    t_batched, errs_batched = _batched_sweep(X, blocks, device, ranks, max_iter)
    t_single_inits, t_inits, inits_diff, t_batched_single = _init_costs(
        X, blocks, ranks
    )
    t_start, t_cpu, errs_cpu = cpu_sweep(X, blocks, ranks, max_iter, n_jobs)
    diff = max(abs(a - b) / b for a, b in zip(errs_gpu, errs_cpu))
    diff_b = max(abs(a - b) / b for a, b in zip(errs_batched, errs_cpu))
    return {
        "cpu_workers_start_s": t_start,
        "batched_cold_s": t_batched_cold,
        "batched_s": t_batched,
        "batched_speedup": t_cpu / t_batched,
        "batched_inits_s": t_inits,
        "one_by_one_inits_s": t_single_inits,
        "batched_one_by_one_inits_s": t_batched_single,
        "inits_max_rel_diff": inits_diff,
        "batched_max_err_rel_diff": diff_b,
        "ranks": [int(ranks[0]), int(ranks[-1])],
        "gpu_cold_s": t_cold,
        "gpu_fixed_s": t_fixed,
        "gpu_s": t_gpu,
        "cpu_s": t_cpu,
        "n_jobs": n_jobs,
        "speedup": t_cpu / t_gpu,
        "max_err_rel_diff": diff,
    }


def pipeline_on_device(device, *, n, batch, max_iter):
    """Extractor + CoupledNMF on ``device``: activations kept there or not."""
    import torch
    from sklearn.pipeline import make_pipeline

    from sklearn_peek import LayerActivationExtractor
    from sklearn_peek._lenet import LeNet

    torch.manual_seed(0)
    net = LeNet((1, 28, 28), 10).eval()
    X = np.random.RandomState(0).rand(n, 1, 28, 28).astype(np.float32)
    sizes = LayerActivationExtractor(net).fit(X[:2]).block_sizes_
    timer = Timer(device)
    out = {"n": n, "features": int(sum(s for _, s in sizes))}
    for output in ("torch", "numpy", "torch"):  # first run: warm-up
        pipe = make_pipeline(
            LayerActivationExtractor(
                net, device=device, output=output, batch_size=batch, progress=False
            ),
            CoupledNMF(
                20, blocks=sizes, device=device, random_state=0, max_iter=max_iter
            ),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[f"{output}_s"], _ = timer.wall(lambda pipe=pipe: pipe.fit(X))
        out[f"{output}_err"] = pipe[-1].reconstruction_err_
    return out


def tf32_cost(X, blocks, rank, device, *, max_iter):
    """Same fit with TF32 matrix units off (default) and on: time and error."""
    torch = _torch()
    timer = Timer(device)
    before = torch.backends.cuda.matmul.allow_tf32
    out = {}
    try:
        for tf32 in (False, True, False):  # the first run warms up
            torch.backends.cuda.matmul.allow_tf32 = tf32
            model = CoupledNMF(
                rank, blocks=blocks, random_state=0, device=device, max_iter=max_iter
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t, _ = timer.wall(lambda model=model: model.fit(X))
            out["tf32" if tf32 else "fp32"] = {
                "s": t,
                "iterations": int(model.n_iter_),
                "err": model.reconstruction_err_,
            }
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    out["err_rel_diff"] = (out["tf32"]["err"] - out["fp32"]["err"]) / out["fp32"]["err"]
    return out


def _one_row_table(cells):
    """Print a markdown table of one row from ``(column, value)`` pairs."""
    print("| " + " | ".join(str(c) for c, _ in cells) + " |")
    print("|" + "---|" * len(cells))
    print("| " + " | ".join(str(v) for _, v in cells) + " |")


def _save(results):
    out = os.environ.get("OUT")
    if out:
        path = os.path.join(out, "bench_gpu.json")
        with open(path, "w") as fh:
            json.dump(results, fh, indent=2)
        return path
    return None


# --------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="small sizes, torch on the CPU instead of a GPU (checks the script)",
    )
    parser.add_argument("--skip-sklearn", action="store_true")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--skip-scorer", action="store_true")
    parser.add_argument(
        "--skip-scorer-warm",
        action="store_true",
        help="leave out the scorer with warm starts (its default)",
    )
    parser.add_argument(
        "--scorer-only",
        action="store_true",
        help="only RankQualityScorer's sweeps of the small matrix, GPU vs CPU",
    )
    parser.add_argument(
        "--sweep-only",
        action="store_true",
        help="only the rank sweeps of the small matrix (CoupledNMF and the scorer)",
    )
    parser.add_argument(
        "--tf32-only",
        action="store_true",
        help="only compare a fit with TF32 matrix units off and on (large case)",
    )
    args = parser.parse_args(argv)
    torch = _torch()
    if args.cpu_smoke:
        device = torch.device("cpu")
        # One intra-op thread: on a small shared machine torch's spinning
        # thread pool otherwise dominates these tiny products.
        torch.set_num_threads(1)
        large = (600, [("input", 300), ("layer", 2700)])
        small = (600, [("input", 60), ("layer", 140)])
        rank, n_iter, repeat, check_rows, ranks = 5, 5, 2, 300, list(range(1, 7))
        sweep_iter = 20
        pipe_n = 300
    else:
        if not torch.cuda.is_available():
            sys.exit("bench_gpu.py needs a CUDA GPU (or pass --cpu-smoke).")
        device = torch.device("cuda")
        large = (10_000, [("input", 3_072), ("layer", 65_536)])
        small = (10_000, [("input", 784), ("layer", 1_780)])
        rank, n_iter, repeat, check_rows, ranks = 20, 20, 3, 2_000, list(range(1, 31))
        sweep_iter = 100
        pipe_n = 10_000
    info = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "sklearn_peek": getattr(sklearn_peek, "__version__", "?"),
        "python": platform.python_version(),
        "tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cpu_cores": os.cpu_count(),
    }
    results = {"info": info, "cases": {}}
    print(
        f"# bench_gpu on {info['device']} (torch {info['torch']}, TF32 {info['tf32']})"
    )

    def sweeps(X, blocks, out, keys, indent=""):
        """Parts 4 and 5, the rank sweeps of the small matrix, named in keys."""
        parts = {
            "sweep": rank_sweep,
            "scorer": scorer_sweep,
            "scorer_warm": scorer_warm_sweep,
        }
        for key in keys:
            out[key] = parts[key](
                X,
                blocks,
                device,
                ranks=ranks,
                max_iter=sweep_iter,
                n_jobs=os.cpu_count(),
            )
            _save(results)
            print(f"{indent}{key}: {out[key]}", flush=True)

    if args.sweep_only or args.scorer_only:
        n, blocks = small
        X = make_matrix(n, blocks, rank, device)
        keys = ["sweep", "scorer"] if args.sweep_only else ["scorer"]
        if not args.skip_scorer_warm:
            keys.append("scorer_warm")
        sweeps(X, blocks, results, keys)
        return results

    if args.tf32_only:
        n, blocks = large
        X = make_matrix(n, blocks, rank, device)
        for max_iter in (20, 200):
            res = tf32_cost(X, blocks, rank, device, max_iter=max_iter)
            results[f"tf32_max_iter_{max_iter}"] = res
            print(f"max_iter={max_iter}: {res}", flush=True)
        _save(results)
        return results

    rows = []
    for label, (n, blocks) in (("large", large), ("small", small)):
        print(f"[{label}] {n} x {sum(s for _, s in blocks)}", flush=True)
        X = make_matrix(n, blocks, rank, device)
        case = {"shape": [n, sum(s for _, s in blocks)], "rank": rank}
        results["cases"][label] = case
        if label == "large":
            case["check"] = check_against_cpu(
                X, blocks, rank, device, rows=check_rows, max_iter=50
            )
            print(f"  check: {case['check']}", flush=True)
        case.update(
            per_iteration(X, blocks, rank, device, n_iter=n_iter, repeat=repeat)
        )
        if label == "large":
            case["residual_configs"] = residual_configs(X, rank, device)
        _save(results)
        if label == "large" and not args.skip_sklearn:
            case.update(sklearn_per_iteration(X, rank, n_iter=2))
            print(f"  sklearn cd: {case['sklearn_cd_ms']:.1f} ms", flush=True)
        if label == "small":
            skip = {
                "sweep": args.skip_sweep,
                "scorer": args.skip_scorer,
                "scorer_warm": args.skip_scorer_warm,
            }
            sweeps(X, blocks, case, [k for k, v in skip.items() if not v], "  ")
        _save(results)
        rows.append((label, case))
        del X
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if not args.skip_pipeline:
        results["pipeline"] = pipeline_on_device(
            device, n=pipe_n, batch=1000, max_iter=50
        )
        _save(results)

    print("\n## Correctness (GPU vs NumPy float32, same random_state)\n")
    chk = results["cases"]["large"]["check"]
    print(
        "| slice | iterations gpu / cpu | error gpu / cpu | rel. diff error "
        "| rel. diff W@H |"
    )
    print("|---|---|---|---|---|")
    print(
        f"| {chk['shape'][0]} x {chk['shape'][1]} | {chk['iterations'][0]} / "
        f"{chk['iterations'][1]} | {chk['err_gpu']:.6g} / {chk['err_cpu']:.6g} | "
        f"{chk['err_rel_diff']:.2e} | {chk['WH_rel_diff']:.2e} |"
    )
    print("\n## Per iteration (ms) and time to tol=1e-4\n")
    print(
        "| case | shape | rank | floor (2 products) | HALS | HALS / floor | "
        "HALS + exact objective | HALS + H penalties | HALS eager (no kernels) | "
        "eager + exact | MU | to tol: s (iters) | sklearn cd on CPU |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, c in rows:
        sk = c.get("sklearn_cd_ms")
        sk_txt = f"{sk:.1f} ({c['cores']} cores)" if sk is not None else "-"
        print(
            f"| {label} | {c['shape'][0]} x {c['shape'][1]} | {c['rank']} | "
            f"{c['floor_ms']:.3f} | {c['hals_ms']:.3f} | "
            f"{c['hals_ms'] / c['floor_ms']:.2f} | {c['hals_exact_ms']:.3f} | "
            f"{c['hals_penalized_ms']:.3f} | {c['hals_eager_ms']:.3f} | "
            f"{c['hals_exact_eager_ms']:.3f} | "
            f"{c['mu_ms']:.3f} | "
            f"{c['to_tol_s']:.2f} ({c['to_tol_iter']}) | {sk_txt} |"
        )
    sw = results["cases"]["small"].get("sweep")
    if sw:
        print(
            f"\n## Rank sweep {sw['ranks'][0]}..{sw['ranks'][1]} "
            f"(max_iter={sweep_iter})\n"
        )
        print(
            "| device, first sweep (compiles kernels): s | device: s "
            "| of which fixed cost (max_iter=1): s | CPU joblib n_jobs: s "
            "| speedup | max rel. diff error |"
        )
        print("|---|---|---|---|---|---|")
        print(
            f"| {sw['gpu_cold_s']:.2f} | {sw['gpu_s']:.2f} | {sw['gpu_fixed_s']:.2f} "
            f"| {sw['cpu_s']:.2f} (n_jobs={sw['n_jobs']}) | "
            f"{sw['speedup']:.1f}x | {sw['max_err_rel_diff']:.2e} |"
        )
        print(
            f"\nStacked (fit_ranks): {sw['batched_s']:.2f} s "
            f"(first run {sw['batched_cold_s']:.2f} s), "
            f"{sw['batched_speedup']:.1f}x the CPU sweep, max rel. diff error "
            f"{sw['batched_max_err_rel_diff']:.2e}; of which the {len(ranks)} "
            f"initialisations {sw['batched_inits_s']:.3f} s (one by one: "
            f"{sw['one_by_one_inits_s']:.3f} s, one by one through the batched "
            "CholeskyQR2: "
            f"{sw['batched_one_by_one_inits_s']:.3f} s; the starts differ by "
            f"at most {sw['inits_max_rel_diff']:.1e})"
        )
    rc = results["cases"]["large"].get("residual_configs")
    if rc:
        print("\n## One-pass residual kernel, large matrix (ms)\n")
        print("| tl.dot | tile | warps | ms |")
        print("|---|---|---|---|")
        for c in rc:
            ms = f"{c['ms']:.3f}" if "ms" in c else "failed"
            print(f"| {c['dot']} | {c['block']} | {c['warps']} | {ms} |")
    sc = results["cases"]["small"].get("scorer")
    if sc:
        print("\n## RankQualityScorer: bcv, cv=3, warm_start=False, same ranks\n")
        _one_row_table(
            [
                ("device, first run: s", f"{sc['gpu_cold_s']:.2f}"),
                ("device: s", f"{sc['gpu_s']:.2f}"),
                ("CPU n_jobs: s", f"{sc['cpu_s']:.2f} (n_jobs={sc['n_jobs']})"),
                ("speedup", f"{sc['speedup']:.1f}x"),
                ("same rank_", sc["rank_gpu"] == sc["rank_cpu"]),
                ("max abs. diff mean score", f"{sc['max_score_abs_diff']:.2e}"),
            ]
        )
        print(
            f"\nOf the device's {sc['gpu_s']:.2f} s, the solver runs took "
            f"{sc['gpu_fit_time_total_s']:.2f} s; the rest is mostly the held-out "
            "scoring (a solve of W per layer, fold and rank)."
        )
    sw = results["cases"]["small"].get("scorer_warm")
    if sw:
        print("\n## RankQualityScorer with its defaults: bcv, cv=3, warm starts\n")
        same = sw["rank_gpu"] == sw["rank_cpu"] == sw["rank_gpu_chains"]
        diffs = (sw["max_score_abs_diff"], sw["max_score_abs_diff_chains"])
        _one_row_table(
            [
                ("device, chains in lockstep: s", f"{sw['gpu_s']:.2f}"),
                ("device, one chain after the other: s", f"{sw['gpu_chains_s']:.2f}"),
                ("CPU n_jobs: s", f"{sw['cpu_s']:.2f} (n_jobs={sw['n_jobs']})"),
                ("speedup", f"{sw['speedup']:.1f}x"),
                ("lockstep gain", f"{sw['lockstep_gain']:.2f}x"),
                ("same rank_", same),
                (
                    "max abs. diff mean score (vs CPU; vs one chain after the other)",
                    "{:.2e}; {:.2e}".format(*diffs),
                ),
            ]
        )
    pl = results.get("pipeline")
    if pl:
        print(f"\n## Pipeline: extractor + CoupledNMF on the device (n={pl['n']})\n")
        print("| activations | s | error |")
        print("|---|---|---|")
        for output in ("torch", "numpy"):
            print(f"| {output} | {pl[output + '_s']:.2f} | {pl[output + '_err']:.6g} |")
    path = _save(results)
    if path:
        print(f"\nwrote {path}")
    return results


if __name__ == "__main__":
    main()
