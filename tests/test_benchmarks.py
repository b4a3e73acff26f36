"""The GPU benchmark script, run in its CPU smoke mode.

``benchmarks/bench_gpu.py`` is run by hand on a lent GPU, in one short
device session: a bug found there costs the session. Its ``--cpu-smoke`` mode
runs every step with small sizes, torch on the CPU standing in for the GPU;
here it must finish and its correctness checks (torch path against the NumPy
path) must agree. Its timings mean nothing on a CPU and are not checked.
``benchmarks/bench_launches.py`` (what a rank sweep would launch on a GPU,
counted on the CPU) runs at tiny sizes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_bench(name, tmp_path, *args):
    """Run ``benchmarks/<name>.py`` with OUT=tmp_path; return (stdout, JSON)."""
    env = dict(os.environ, OUT=str(tmp_path), PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads((tmp_path / f"{name}.json").read_text())


def test_bench_gpu_cpu_smoke_runs_and_its_checks_agree(tmp_path):
    stdout, res = _run_bench("bench_gpu", tmp_path, "--cpu-smoke")
    check = res["cases"]["large"]["check"]
    assert check["err_rel_diff"] < 1e-3 and check["WH_rel_diff"] < 1e-3
    sweep = res["cases"]["small"]["sweep"]
    assert sweep["max_err_rel_diff"] < 1e-3
    assert sweep["batched_max_err_rel_diff"] < 1e-3
    assert sweep["inits_max_rel_diff"] < 1e-4
    for key in ("batched", "one_by_one", "batched_one_by_one"):
        assert sweep[f"{key}_inits_s"] > 0, key
    scorer = res["cases"]["small"]["scorer"]
    assert scorer["rank_gpu"] == scorer["rank_cpu"]
    assert scorer["max_score_abs_diff"] < 1e-4
    warm = res["cases"]["small"]["scorer_warm"]
    assert warm["rank_gpu"] == warm["rank_gpu_chains"] == warm["rank_cpu"]
    assert warm["max_score_abs_diff"] < 1e-4
    assert warm["max_score_abs_diff_chains"] < 1e-4
    pipe = res["pipeline"]
    assert pipe["torch_err"] == pytest.approx(pipe["numpy_err"], rel=1e-4)
    # the report printed for the note: one table per part
    for part in (
        "Per iteration",
        "Rank sweep",
        "RankQualityScorer",
        "with its defaults",
        "Pipeline",
    ):
        assert part in stdout, part


def test_bench_launches_counts_every_configuration(tmp_path):
    # The counting script behind the lockstep numbers in gpu.rst, tiny sizes.
    args = ["--ranks=4", "--max-iter=2", "--n=60", "--width=10"]  # 2 chains
    _, res = _run_bench("bench_launches", tmp_path, *args)
    assert [r["n_tasks"] for r in res] == [3, 6, 3]  # lockstep: a task per fold
    # lockstep computes what one chain after the other does (the cold sweep,
    # res[2], starts each rank afresh: after 2 iterations it may pick another)
    assert res[0]["rank"] == res[1]["rank"]
    assert res[0]["mean_score"] == pytest.approx(res[1]["mean_score"], rel=1e-4)
    for r in res:  # the kernel path ran (through the interpreter)
        assert r["triton_launches"] > 0 and r["torch_ops"] > r["host_syncs"] > 0


def test_profile_gpu_sweep_cpu_smoke_times_every_phase(tmp_path):
    # The profiling script of the stacked sweep wraps functions of the
    # package by name: a renamed function would leave its phase untimed.
    args = ["--cpu-smoke", "--skip-sklearn", "--skip-cpu"]
    stdout, res = _run_bench("profile_gpu_sweep", tmp_path, *args)
    phases = res["phases"]
    assert set(phases["outer"]) == {
        "validate X, blocks, weights",
        "initialisations (stacked)",
        "solver run (fit_hals_batched)",
        "finish each model (errors, copies)",
    }
    assert all(v > 0 for v in phases["outer"].values())
    calls, most = phases["inner_calls"], max(phases["n_iter"])
    assert calls["product H X^T"] >= most and calls["product W^T X"] >= most
    assert calls["HALS sweeps"] >= 2 * most  # W and H, every iteration
    assert len(phases["n_iter"]) == 6 and max(phases["n_iter"]) <= 20
    assert res["profile"]["top_host"] and "| top by host time |" in stdout
    assert res["scorer"]["cold_starts_rank"] and res["scorer"]["warm_starts_rank"]
