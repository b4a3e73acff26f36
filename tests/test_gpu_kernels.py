"""The Triton kernels of the GPU path, run by Triton's interpreter on the CPU.

``TRITON_INTERPRET=1`` has to be set before Triton compiles anything, so each
check runs in a fresh Python process that prints its measurements as JSON;
the assertions are made here. On a CUDA machine tests/test_gpu.py runs the
same kernels compiled; here they are also compiled for a Hopper GPU (sm_90)
without one, which catches what the interpreter lets through.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton", minversion="3.0")  # the dev extra's triton>=3.0
pytest.importorskip("torch")


def _run(code, **env):
    full = {**os.environ, "TRITON_INTERPRET": "1", **env}
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
            _solvers._hals_sweep_eager(eager, num, G, l1, l2)
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


STACKED = """
import json
import torch
from sklearn_peek import _gpu_kernels, _solvers

torch.manual_seed(2)
out = []
for dtype in (torch.float32, torch.float64):
    for sizes in ([1], [3, 1, 5], [20, 7, 2, 33], [16, 16], [150, 130]):
        R, m = sum(sizes), 45
        A = torch.rand(R, m, dtype=dtype)
        B = torch.rand(R, 2 * R, dtype=dtype)
        G = B @ B.T
        mask = torch.zeros(R, R, dtype=dtype)
        at = 0
        for s in sizes:
            mask[at : at + s, at : at + s] = 1
            at += s
        G = G * mask
        if R > 4:  # an empty component inside the stack
            G[4, :] = 0
            G[:, 4] = 0
        num = (torch.rand(m, R, dtype=dtype) * R).T
        stacked, eager = A.clone(), A.clone()
        layout = _gpu_kernels.stack_layout(sizes, A)
        _gpu_kernels.sweep_stacked(stacked, num, G, layout)
        _solvers._hals_sweep_eager(eager, num, G, 0.0, 0.0)
        out.append({
            "case": f"{dtype} {sizes}",
            # A stack taller than one tile: only its largest rank must fit.
            "usable": _gpu_kernels.usable(A, num, G, height=max(sizes)),
            "usable_flat": _gpu_kernels.usable(A, num, G),
            "f64": dtype == torch.float64,
            "err": float((stacked - eager).abs().max()),
            "moved": float((eager - A).abs().max()),
        })
print(json.dumps(out))
"""


def test_stacked_sweep_kernel_matches_the_eager_sweep():
    cases = _run(STACKED)
    assert len(cases) == 10
    for c in cases:
        assert c["usable"], c["case"]
        assert c["usable_flat"] == ("[150, 130]" not in c["case"]), c["case"]
        assert c["moved"] > 1e-3, c["case"]
        assert c["err"] <= (1e-12 if c["f64"] else 1e-5), c


STACKED_RESIDUAL = """
import json
import torch
from sklearn_peek import _gpu_kernels

torch.manual_seed(4)
n, p, sizes = 150, 260, [1, 7, 20, 3, 16, 17]
X = torch.rand(n, p)
Wt = torch.rand(sum(sizes), n)
H = torch.rand(sum(sizes), p)
d = torch.rand(p)
layout = _gpu_kernels.stack_layout(sizes, X)
got = [
    _gpu_kernels.weighted_residuals_stacked(X, Wt, H, d, layout, dot=dot).tolist()
    for dot in (True, False)
]
ref, at = [], 0
for s in sizes:
    R = X.double() - Wt[at : at + s].T.double() @ H[at : at + s].double()
    ref.append(float(((R * R) @ d.double()).sum()))
    at += s
print(json.dumps({"got": got, "ref": ref}))
"""


def test_stacked_residual_kernel_matches_float64_per_problem():
    # Both ways of forming the tiles of W H: tl.dot over 16 rows at a time
    # (rank 16 takes one, 17 and 20 two, rank 1 is mostly padding) and
    # rank-one updates.
    res = _run(STACKED_RESIDUAL)
    for got in res["got"]:
        assert len(got) == 6
        for value, ref in zip(got, res["ref"]):
            assert value == pytest.approx(ref, rel=1e-6)


PENALTY_EDGES = """
import json
import torch
from sklearn_peek import _gpu_kernels, _solvers

torch.manual_seed(5)
r, m = 4, 30
A = torch.rand(r, m, dtype=torch.float64)
B = torch.rand(r, 8, dtype=torch.float64)
G = B @ B.T
G[2, :] = 0
G[:, 2] = 0
num = torch.rand(r, m, dtype=torch.float64)
out = {}
for name, l1, l2 in (
    ("zero_vector", torch.zeros(m, dtype=torch.float64), 0.0),
    ("zero_dim", torch.tensor(0.2, dtype=torch.float64), 0.0),
):
    fused, eager = A.clone(), A.clone()
    _gpu_kernels.sweep(fused, num, G, l1, l2)
    _solvers._hals_sweep_eager(eager, num, G, l1, l2)
    out[name] = float((fused - eager).abs().max())
    out[name + "_empty_row"] = float(fused[2].abs().max())
out["start_row"] = float(A[2].abs().max())
print(json.dumps(out))
"""


def test_sweep_kernel_penalty_edge_cases_match_eager():
    # A penalty vector counts as a penalty without a look at its entries (an
    # empty row is zeroed, even by an all-zero vector) in both sweeps, and a
    # 0-d tensor is one value, not a vector over the columns.
    res = _run(PENALTY_EDGES)
    assert res["zero_vector"] <= 1e-12
    assert res["zero_dim"] <= 1e-12
    assert res["start_row"] > 0
    assert res["zero_vector_empty_row"] == 0.0  # zeroed: a vector is a penalty
    assert res["zero_dim_empty_row"] == 0.0  # 0.2: a penalty


# Start of the scripts that count kernel calls: after count(name),
# calls[name] counts the calls of _gpu_kernels.<name>.
COUNT = """
from sklearn_peek import _gpu_kernels

calls = {}

def count(name):
    orig = getattr(_gpu_kernels, name)
    calls[name] = 0

    def counted(*a, **k):
        calls[name] += 1
        return orig(*a, **k)

    setattr(_gpu_kernels, name, counted)
"""

FIT_RANKS = """
import json, warnings
import numpy as np
import torch
from sklearn_peek import CoupledNMF, fit_ranks

count("sweep_stacked")
count("weighted_residuals_stacked")
rng = np.random.RandomState(0)
W = rng.rand(70, 4)
X = np.hstack([W @ rng.rand(4, 20), 20 * W @ rng.rand(4, 60)])
X = (X * rng.uniform(0.97, 1.03, size=X.shape)).astype(np.float32)
est = CoupledNMF(blocks=[("a", 20), ("b", 60)], random_state=0, max_iter=60)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ms, _ = fit_ranks(est, torch.from_numpy(X), [1, 3, 5])
    refs, _ = fit_ranks(est, X, [1, 3, 5])
print(json.dumps({
    "calls": calls["sweep_stacked"],
    "residual_calls": calls["weighted_residuals_stacked"],
    "errs": [m.reconstruction_err_ for m in ms],
    "refs": [m.reconstruction_err_ for m in refs],
    "iters": [[m.n_iter_ for m in ms], [m.n_iter_ for m in refs]],
}))
"""


def test_fit_ranks_uses_the_stacked_kernel_and_matches_numpy():
    res = _run(COUNT + FIT_RANKS)
    assert res["calls"] >= 2 * max(res["iters"][0])
    # Near convergence the float32 stopping test reads X once for all ranks.
    assert res["residual_calls"] > 0
    for got, ref in zip(res["errs"], res["refs"]):
        assert got == pytest.approx(ref, rel=1e-3)
    assert all(abs(a - b) <= 2 for a, b in zip(*res["iters"]))


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
                "got": float(_gpu_kernels.weighted_residual(X, Wt, H, d, dot=dot)),
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
from sklearn_peek import CoupledNMF

count("sweep")
count("weighted_residual")
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
    *fits, calls = _run(COUNT + FIT)
    for f in fits:
        assert f["err"] == pytest.approx(f["err_ref"], rel=1e-3), f
        assert f["wh"] < 1e-3, f
        assert abs(f["iters"][0] - f["iters"][1]) <= 2, f
    # The kernels did the work: two sweeps per iteration, and the float32
    # stopping test near convergence used the one-pass residual.
    total_iters = sum(f["iters"][0] for f in fits)
    assert calls["sweep"] >= 2 * total_iters
    assert calls["weighted_residual"] > 0


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


FAILING = """
import json, warnings
import numpy as np
import torch
from sklearn_peek import CoupledNMF, _gpu_kernels

def broken(*a, **k):  # stands for a kernel that does not compile on some GPU
    raise RuntimeError("no such instruction")

_gpu_kernels.sweep = broken
rng = np.random.RandomState(0)
X = rng.rand(40, 30).astype(np.float32)
with warnings.catch_warnings(record=True) as rec:
    warnings.simplefilter("always")
    m = CoupledNMF(3, random_state=0, max_iter=30).fit(torch.from_numpy(X))
    ref = CoupledNMF(3, random_state=0, max_iter=30).fit(X)
msgs = [str(w.message) for w in rec if issubclass(w.category, RuntimeWarning)]
A = torch.rand(3, 10)
print(json.dumps({
    "warned": [s for s in msgs if "no such instruction" in s],
    "err": m.reconstruction_err_,
    "ref": ref.reconstruction_err_,
    "usable_after": _gpu_kernels.usable(A, A.clone(), A @ A.T),
}))
"""


def test_a_failing_kernel_falls_back_to_the_eager_code_with_a_warning():
    res = _run(FAILING)
    assert len(res["warned"]) == 1  # once, not at every sweep
    assert "continues without the kernels" in res["warned"][0]
    assert res["err"] == pytest.approx(res["ref"], rel=1e-4)
    assert res["usable_after"] is False


def test_turned_off_restores_the_kernels_afterwards():
    code = """
    import json, torch
    from sklearn_peek import _gpu_kernels
    A = torch.rand(3, 10)
    seen = [_gpu_kernels.usable(A, A.clone(), A @ A.T)]
    with _gpu_kernels.turned_off():
        seen.append(_gpu_kernels.usable(A, A.clone(), A @ A.T))
    seen.append(_gpu_kernels.usable(A, A.clone(), A @ A.T))
    print(json.dumps(seen))
    """
    assert _run(code) == [True, False, True]


SYNCS = """
import json, sys
import torch
sys.path.insert(0, {tests!r})
from _syncs import rates

print(json.dumps(rates(torch.device("cpu"))))
"""


def test_kernel_path_syncs_per_iteration_within_budget():
    # the budget and the cases are in _syncs.py (and test_host_syncs.py)
    from _syncs import KERNEL_BUDGET

    got = _run(SYNCS.format(tests=os.path.dirname(os.path.abspath(__file__))))
    assert {name: rate for name, (rate, _) in got.items()} == KERNEL_BUDGET, got


COMPILE = """
import json
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from sklearn_peek import _gpu_kernels

_, hals_rows, residual, hals_stacked, residual_stacked = _gpu_kernels._build()
f32, f64, i32, idx = "*fp32", "*fp64", "i32", "*i32"
res_args = {"X": f32, "WT": f32, "H": f32, "D": f32}
strides = {"stride_x": i32, "stride_wk": i32, "stride_wm": i32, "stride_h": i32}
cases = []
for R, dot in ((16, True), (32, True), (32, False), (64, True), (128, True)):
    sig = {**res_args, "OUT": f64, "n": i32, "p": i32, "r": i32, **strides}
    bn = 128 if R <= 32 else 64  # as weighted_residual picks the tile
    cases.append((residual, sig, {"R": R, "BM": 64, "BN": bn, "DOT": dot}))
for dot in (True, False):
    sig = {**res_args, "OFF": idx, "SIZE": idx, "OUT": f64, "n": i32, "p": i32,
           "n_prob": i32, **strides}
    cases.append((residual_stacked, sig, {"BM": 64, "BN": 128, "DOT": dot}))
sweep = {"stride_a": i32, "stride_num": i32, "stride_num_c": i32, "stride_g": i32}
for ptr, R, modes in ((f32, 16, (0, 0, False)), (f32, 256, (0, 0, False)),
                      (f32, 32, (1, 1, True)), (f32, 32, (2, 2, True)),
                      (f64, 32, (2, 0, True))):
    sig = {"A": ptr, "NUM": ptr, "G": ptr, "L1": ptr, "L2": ptr, "r": i32, "m": i32,
           **sweep}
    consts = dict(zip(("L1_MODE", "L2_MODE", "HAS_PEN"), modes))
    cases.append((hals_rows, sig, {**consts, "R": R, "BLOCK": _gpu_kernels._block(R)}))
sig = {"A": f32, "NUM": f32, "G": f32, "OFF": idx, "SIZE": idx, "m": i32, **sweep}
cases.append((hals_stacked, sig, {"R": 32, "BLOCK": _gpu_kernels._block(32)}))
out = []
for fn, sig, consts in cases:
    types = {**sig, **dict.fromkeys(consts, "constexpr")}
    src = ASTSource(fn, types, constexprs=consts)
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
    out.append({"kernel": fn.__name__, "consts": str(consts), "entry": ".entry" in ptx})
print(json.dumps(out))
"""


def test_every_kernel_compiles_for_a_hopper_gpu(tmp_path):
    # The interpreter runs the kernels as Python: what only the compiler
    # refuses (a loop variable whose type changes in the loop, say: float32
    # accumulated as float64 runs in the interpreter) would pass it and then
    # turn the kernels off on the first GPU with a warning. Compiled here for
    # sm_90 without a GPU (Triton ships its own ptxas), at the tile shapes
    # the library launches, into an empty cache.
    from triton.compiler import ASTSource

    if "constexprs" not in ASTSource.__init__.__code__.co_varnames:
        pytest.skip("this Triton's ASTSource takes no constexprs= (older API)")
    res = _run(COMPILE, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path))
    assert len(res) == 13
    assert all(r["entry"] for r in res), res
    assert {r["kernel"] for r in res} == {
        "residual_tiles",
        "residual_tiles_stacked",
        "hals_rows",
        "hals_rows_stacked",
    }
