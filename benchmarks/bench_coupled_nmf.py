"""Benchmark: CoupledNMF(solver="hals") against scikit-learn's NMF(solver="cd").

Data shaped like MNIST pixels (784 columns, about 80% zeros, values in [0, 1])
plus one post-ReLU conv layer (32 channels x 13 x 13 = 5,408 columns: 3x3
convolution, ReLU, 2x2 max-pool) computed from them. Both solvers start from
the same NNDSVDa initialization of the concatenated matrix, with
``block_weights="none"`` so that the two problems are identical.

For every case the script reports: the iterations scikit-learn runs with
``tol=1e-4`` (or ``max_iter``) and the objective it ends at; the iterations
CoupledNMF needs to reach that objective (first iteration at or below it; up
to 3x scikit-learn's ``max_iter``), with its default HALS (one sweep per
product: the same iterates as scikit-learn's "cd") and with the accelerated
HALS of the solver module (``inner=True``, several sweeps per product);
the times, as iterations x seconds per iteration, the seconds per iteration
being the minimum over ``--repeat`` interleaved timings of a 10-iteration
block from the start (robust on a shared machine; conservative for the
accelerated variant, whose first iterations do the most inner sweeps); the
ratios ours / scikit-learn; and the peak extra memory (tracemalloc) of a
CoupledNMF fit (default NNDSVDa init, "norm" weights) against the input size.

Run ``python benchmarks/bench_coupled_nmf.py`` (full, several minutes) or
``--quick`` (one small case).
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
import warnings

import numpy as np
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning

from sklearn_peek import CoupledNMF, _solvers
from sklearn_peek._solvers import nndsvd, randomized_svd_weighted


def make_mnist_like(n_samples, *, random_state=0, dtype=np.float32):
    """Synthetic [pixels | conv layer] data, non-negative and sparse-ish."""
    rng = np.random.RandomState(random_state)
    yy, xx = np.mgrid[0:28, 0:28]
    protos = np.zeros((40, 28, 28))
    for k in range(40):  # each prototype: a few blurred strokes
        for _ in range(rng.randint(2, 5)):
            x0, y0, x1, y1 = rng.uniform(6, 22, size=4)
            t = np.linspace(0, 1, 30)[:, None, None]
            px, py = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
            dist2 = ((xx - px) ** 2 + (yy - py) ** 2).min(axis=0)
            protos[k] = np.maximum(protos[k], np.exp(-dist2 / 2.0))
    protos = protos.reshape(40, 784)
    coef = rng.gamma(0.3, 1.0, size=(n_samples, 40)) * (rng.rand(n_samples, 40) < 0.1)
    coef[np.arange(n_samples), rng.randint(0, 40, n_samples)] += 1.0
    pix = coef @ protos + 0.05 * rng.rand(n_samples, 784)
    pix = np.clip(pix, 0, 1)
    pix[pix < 0.15] = 0
    filt = rng.standard_normal((32, 3, 3)) / 3.0
    bias = 0.1 * rng.rand(32)
    conv = np.empty((n_samples, 32 * 13 * 13))
    for s in range(0, n_samples, 500):
        img = pix[s : s + 500].reshape(-1, 28, 28)
        win = np.lib.stride_tricks.sliding_window_view(img, (3, 3), axis=(1, 2))
        out = np.einsum("nyxij,cij->ncyx", win, filt) - bias[None, :, None, None]
        out = np.maximum(out, 0)[:, :, :26, :26]
        out = out.reshape(-1, 32, 13, 2, 13, 2).max(axis=(3, 5))
        conv[s : s + 500] = out.reshape(len(img), -1)
    return np.hstack([pix, conv]).astype(dtype)


def nndsvda_init(X, k, random_state=0):
    s = np.ones(X.shape[1], dtype=X.dtype)
    U, S, Vt = randomized_svd_weighted(X, s, k, np.random.RandomState(random_state))
    W, H = nndsvd(U.astype(X.dtype), S, Vt.astype(X.dtype))
    avg = X.mean()
    W[W == 0] = avg
    H[H == 0] = avg
    return W, H


def objective(X, W, H):
    """0.5 * ||X - W H||_F^2, exact (chunked, float64 accumulation)."""
    total = 0.0
    for s in range(0, X.shape[0], 1000):
        R = W[s : s + 1000] @ H - X[s : s + 1000]
        total += float(np.sum(R.astype(np.float64) ** 2))
    return 0.5 * total


def _first_reach(X, xnorm, W0, H0, target, max_iter, inner, chunk=25):
    """Iterations our HALS needs to reach ``target`` (None if never), and the
    objective at the last iteration run.

    Runs in chunks (the state of the solver is only W and H, so chunks give
    the same iterates as one run) and stops as soon as the target is reached.
    """
    d = np.ones(X.shape[1], dtype=X.dtype)
    W, H, done = W0, H0, 0
    while done < max_iter:
        W, H, n, info = _solvers.fit_hals(
            X, W, H, d, xnorm=xnorm, max_iter=min(chunk, max_iter - done),
            tol=0.0, inner=inner,
        )  # fmt: skip
        hist = np.array(info["objective"][1:])
        reached = np.flatnonzero(hist <= target * (1 + 1e-6))
        if reached.size:
            return done + int(reached[0]) + 1, float(hist[reached[0]])
        done += n
    return None, float(hist[-1])


def _per_iteration(X, xnorm, W0, H0, k, n_iter, repeat, accelerated=True):
    """Seconds per iteration of each method: min over repeats, interleaved."""
    d = np.ones(X.shape[1], dtype=X.dtype)
    runs = {
        "sk": lambda: NMF(k, init="custom", solver="cd", tol=0.0, max_iter=n_iter)
        .fit(X, W=W0.copy(), H=H0.copy()),
        "acc": lambda: _solvers.fit_hals(X, W0, H0, d, xnorm=xnorm, tol=0.0,
                                         max_iter=n_iter, inner=True),
        "plain": lambda: CoupledNMF(k, block_weights="none", init="custom", tol=0.0,
                                    max_iter=n_iter).fit(X, W=W0.copy(), H=H0.copy()),
    }  # fmt: skip
    if not accelerated:
        runs.pop("acc")
    best = dict.fromkeys(runs, np.inf)
    for _ in range(repeat):
        for name, run in runs.items():
            gc.collect()
            t = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t)
    return {name: t / n_iter for name, t in best.items()}


def run_case(n, k, dtype, *, max_iter, repeat=3, block=10, accelerated=True):
    X = make_mnist_like(n, dtype=dtype)
    W0, H0 = nndsvda_init(X, k)
    # ||X||_F^2 for the solver's objective: chunked, no float64 copy of X.
    xnorm = float(_solvers.column_sums64(X).sum())
    out = {"n": n, "k": k, "dtype": np.dtype(dtype).name, "in_mb": X.nbytes / 2**20}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = NMF(k, init="custom", solver="cd", tol=1e-4, max_iter=max_iter)
        Wsk = sk.fit_transform(X, W=W0.copy(), H=H0.copy())
        out["it_sk"] = sk.n_iter_
        target = objective(X, Wsk, sk.components_)
        out["obj_sk"] = target
        del Wsk
        out["it_plain"], out["obj_plain"] = _first_reach(
            X, xnorm, W0, H0, target, 3 * max_iter, False
        )
        out["it_acc"], out["obj_acc"] = (
            _first_reach(X, xnorm, W0, H0, target, 3 * max_iter, True)
            if accelerated
            else (None, float("nan"))
        )
        per = _per_iteration(X, xnorm, W0, H0, k, block, repeat, accelerated)
        out["t_sk"] = per["sk"] * out["it_sk"]
        for name in ("acc", "plain"):
            it = out[f"it_{name}"]
            per_it = per.get(name, float("nan"))
            out[f"t_{name}"] = per_it * (it if it else 3 * max_iter)

        # Peak memory of a fit (a few iterations: the peak is per iteration).
        gc.collect()
        tracemalloc.start()
        CoupledNMF(k, init="nndsvda", max_iter=3, tol=0.0, random_state=0).fit(X)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out["mem"] = peak / X.nbytes
    return out


def _cell(t, it, t_ref):
    if it is None:
        return f"{t:.2f} (not reached)", "-"
    return f"{t:.2f} ({it})", f"{t / t_ref:.2f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small case")
    parser.add_argument("--rows", type=int, nargs="*", default=None)
    parser.add_argument("--ranks", type=int, nargs="*", default=None)
    parser.add_argument("--dtypes", nargs="*", default=None)
    parser.add_argument(
        "--max-iter",
        type=int,
        default=200,
        help="scikit-learn's max_iter (ours may run up to 3x as many iterations)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="timing repeats")
    parser.add_argument(
        "--no-accelerated",
        action="store_true",
        help="skip the accelerated HALS variant (saves its up to 3x max_iter run)",
    )
    args = parser.parse_args(argv)
    rows = args.rows or ([500] if args.quick else [2000, 10000])
    ranks = args.ranks or ([10] if args.quick else [10, 30])
    dtypes = args.dtypes or (["float32"] if args.quick else ["float32", "float64"])
    print(
        "| rows x cols | rank | dtype | sklearn cd: s (iters) "
        "| ours (CoupledNMF): s (iters) | ratio | accelerated HALS: s (iters) "
        "| ratio | objective sklearn / ours / accelerated "
        "| peak extra mem / input |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in rows:
        for k in ranks:
            for dt in dtypes:
                r = run_case(
                    n,
                    k,
                    np.dtype(dt),
                    max_iter=args.max_iter,
                    repeat=args.repeat,
                    accelerated=not args.no_accelerated,
                )
                plain, ratio_plain = _cell(r["t_plain"], r["it_plain"], r["t_sk"])
                acc, ratio_acc = _cell(r["t_acc"], r["it_acc"], r["t_sk"])
                print(
                    f"| {n} x 6192 | {k} | {r['dtype']} "
                    f"| {r['t_sk']:.2f} ({r['it_sk']}) | {plain} | {ratio_plain} "
                    f"| {acc} | {ratio_acc} "
                    f"| {r['obj_sk']:.6g} / {r['obj_plain']:.6g} / {r['obj_acc']:.6g} "
                    f"| {r['mem']:.2f} ({r['in_mb']:.0f} MiB input) |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
