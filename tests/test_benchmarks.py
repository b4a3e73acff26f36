"""The GPU benchmark script, run in its CPU smoke mode.

``benchmarks/bench_gpu.py`` is run by hand on a lent GPU, in one short
device session: a bug found there costs the session. Its ``--cpu-smoke`` mode
runs every step with small sizes, torch on the CPU standing in for the GPU;
here it must finish and its correctness checks (torch path against the NumPy
path) must agree. Its timings mean nothing on a CPU and are not checked.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_gpu_cpu_smoke_runs_and_its_checks_agree(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--cpu-smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "bench_gpu.json").read_text())
    check = res["cases"]["large"]["check"]
    assert check["err_rel_diff"] < 1e-3 and check["WH_rel_diff"] < 1e-3
    sweep = res["cases"]["small"]["sweep"]
    assert sweep["max_err_rel_diff"] < 1e-3
    assert sweep["batched_max_err_rel_diff"] < 1e-3
    assert sweep["inits_max_rel_diff"] < 1e-4
    for key in ("batched", "one_by_one", "householder_one_by_one"):
        assert sweep[f"{key}_inits_s"] > 0, key
    scorer = res["cases"]["small"]["scorer"]
    assert scorer["rank_gpu"] == scorer["rank_cpu"]
    assert scorer["max_score_abs_diff"] < 1e-4
    pipe = res["pipeline"]
    assert pipe["torch_err"] == pytest.approx(pipe["numpy_err"], rel=1e-4)
    # the report printed for the note: one table per part
    for part in ("Per iteration", "Rank sweep", "RankQualityScorer", "Pipeline"):
        assert part in proc.stdout, part
