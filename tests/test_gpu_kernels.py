"""The Triton kernels of the GPU path, run by Triton's interpreter on the CPU.

``TRITON_INTERPRET=1`` has to be set before Triton compiles anything, so each
check runs in a fresh Python process that prints its measurements as JSON;
the assertions are made here. On a CUDA machine tests/test_gpu.py runs the
same kernels compiled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")
pytest.importorskip("torch")


def _run(code, **env):
    full = dict(os.environ, TRITON_INTERPRET="1", **env)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


SWEEP = """
import json
import torch
from sklearn_peek import _gpu_kernels, _solvers

torch.manual_seed(0)
out = []
for dtype in (torch.float32, torch.float64):
    for r, m in ((1, 5), (5, 37), (20, 300), (33, 70)):
        for pen in ("none", "scalar", "vector"):
            A = torch.rand(r, m, dtype=dtype)
            B = torch.rand(r, 3 * r, dtype=dtype)
            G = B @ B.T
            if r > 2:  # an empty component: zero row and column in G
                G[1, :] = 0
                G[:, 1] = 0
            # The products with X arrive as transposed views: test that layout.
            num = (torch.rand(m, r, dtype=dtype) * r).T
            if pen == "none":
                l1, l2 = 0.0, 0.0
            elif pen == "scalar":
                l1, l2 = 0.1, 0.3
            else:
                l1 = 0.1 * torch.rand(m, dtype=dtype)
                l2 = torch.rand(m, dtype=dtype)
            fused, eager = A.clone(), A.clone()
            usable = _gpu_kernels.usable(fused, num, G)
            _gpu_kernels.sweep(fused, num, G, l1, l2)
            _solvers._hals_sweep_eager(eager, num, G, l1, l2, False)
            out.append({
                "case": f"{dtype} r={r} m={m} {pen}",
                "f64": dtype == torch.float64,
                "usable": usable,
                "err": float((fused - eager).abs().max()),
                "moved": float((eager - A).abs().max()),
                "row1": float(fused[1].abs().max()) if r > 2 else None,
                "row1_before": float(A[1].abs().max()) if r > 2 else None,
            })
print(json.dumps(out))
"""


def test_sweep_kernel_matches_the_eager_sweep():
    cases = _run(SWEEP)
    assert len(cases) == 24
    for c in cases:
        assert c["usable"], c["case"]
        assert c["moved"] > 1e-3, c["case"]  # the sweep did change A
        assert c["err"] <= (1e-12 if c["f64"] else 1e-5), c
        if c["row1"] is not None:
            if "none" in c["case"]:  # an empty row is kept as it was...
                assert c["row1"] == pytest.approx(c["row1_before"]), c["case"]
            else:  # ...and zeroed when a penalty is set
                assert c["row1"] == 0.0, c["case"]


RESIDUAL = """
import json
import torch
from sklearn_peek import _gpu_kernels

torch.manual_seed(1)
out = []
for n, p, r in ((5, 7, 1), (130, 300, 20), (70, 200, 40), (64, 128, 16)):
    X = torch.rand(n, p)
    W = torch.rand(n, r)
    H = torch.rand(r, p)
    d = torch.rand(p)
    R = X.double() - W.double() @ H.double()
    ref = float(((R * R) @ d.double()).sum())
    for name, Wt in (("contiguous", W.T.contiguous()), ("view", W.T)):
        for dot in (True, False):
            out.append({
                "case": f"{n}x{p} r={r} {name} dot={dot}",
                "usable": _gpu_kernels.residual_usable(X, Wt, H, d),
                "got": _gpu_kernels.weighted_residual(X, Wt, H, d, dot=dot),
                "ref": ref,
            })
out.append({"float64_usable": _gpu_kernels.residual_usable(
    X.double(), W.T.double(), H.double(), d.double())})
print(json.dumps(out))
"""


def test_residual_kernel_matches_float64():
    *cases, last = _run(RESIDUAL)
    assert len(cases) == 16
    for c in cases:
        assert c["usable"], c["case"]
        assert c["got"] == pytest.approx(c["ref"], rel=1e-6), c["case"]
    # float64 data keeps the eager residual (the kernel is float32 only).
    assert last["float64_usable"] is False


FIT = """
import json, warnings
import numpy as np
import torch
from sklearn_peek import CoupledNMF, _gpu_kernels

calls = {"sweep": 0, "residual": 0}
sweep, residual = _gpu_kernels.sweep, _gpu_kernels.weighted_residual

def counted_sweep(*a, **k):
    calls["sweep"] += 1
    return sweep(*a, **k)

def counted_residual(*a, **k):
    calls["residual"] += 1
    return residual(*a, **k)

_gpu_kernels.sweep = counted_sweep
_gpu_kernels.weighted_residual = counted_residual

rng = np.random.RandomState(0)
W = rng.rand(60, 4)
X = np.hstack([W @ rng.rand(4, 25), 20 * W @ rng.rand(4, 90)])
X = (X * rng.uniform(0.97, 1.03, size=X.shape)).astype(np.float32)
blocks = [("a", 25), ("b", 90)]
out = []
for kw in ({}, {"alpha_W": 1e-6, "alpha_H": 1e-6, "l1_ratio": 0.5}):
    args = dict(n_components=4, blocks=blocks, random_state=0, max_iter=150, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = CoupledNMF(**args)
        W_ref = ref.fit_transform(X)
        mod = CoupledNMF(device="cpu", **args)
        W_t = mod.fit_transform(torch.from_numpy(X))
    P = W_t.numpy().astype(np.float64) @ mod.components_.astype(np.float64)
    P_ref = W_ref.astype(np.float64) @ ref.components_.astype(np.float64)
    out.append({
        "kw": str(kw),
        "err": mod.reconstruction_err_,
        "err_ref": ref.reconstruction_err_,
        "wh": float(np.linalg.norm(P - P_ref) / np.linalg.norm(P_ref)),
        "iters": [int(mod.n_iter_), int(ref.n_iter_)],
    })
out.append(dict(calls))
print(json.dumps(out))
"""


def test_fit_with_the_kernels_matches_numpy():
    *fits, calls = _run(FIT)
    for f in fits:
        assert f["err"] == pytest.approx(f["err_ref"], rel=1e-3), f
        assert f["wh"] < 1e-3, f
        assert abs(f["iters"][0] - f["iters"][1]) <= 2, f
    # The kernels did the work: two sweeps per iteration, and the float32
    # stopping test near convergence used the one-pass residual.
    total_iters = sum(f["iters"][0] for f in fits)
    assert calls["sweep"] >= 2 * total_iters
    assert calls["residual"] > 0


def test_kernels_can_be_switched_off():
    code = """
    import json, torch
    from sklearn_peek import _gpu_kernels
    A = torch.rand(3, 10)
    G = A @ A.T
    X = torch.rand(10, 8)
    H = torch.rand(3, 8)
    d = torch.ones(8)
    print(json.dumps([
        _gpu_kernels.usable(A, A.clone(), G),
        _gpu_kernels.residual_usable(X, A, H, d),
    ]))
    """
    assert _run(code) == [True, True]
    assert _run(code, SKLEARN_PEEK_GPU_KERNELS="0") == [False, False]
