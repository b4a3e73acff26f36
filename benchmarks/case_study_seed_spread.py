"""How much the case-study correlations move with the rank sweeps' seeds alone.

Usage::

    python benchmarks/case_study_seed_spread.py                 # seeds 0 1 2
    python benchmarks/case_study_seed_spread.py --seeds 1 2 --with-docs

``run_paper_studies("full", random_state=r)`` trains the same 60 networks for
every ``r`` (a network's seed is its study seed) and changes only the seeds
of the rank sweeps. For each seed this prints Spearman's rho of every
(study, layer, measure) with test accuracy, then the spread (largest minus
smallest rho over the seeds) per criterion: pooled over the 60 networks and
within single studies. ``--with-docs`` reads seed 0 from
``docs/case_studies_results.correlations.csv`` (written by
``benchmarks/run_case_studies.py`` with ``random_state=0``) instead of running
it again. Each seed is a full preset: about 2.5 to 5 minutes on 2 cores.
Writes ``$OUT/case_study_seed_spread.json`` when ``OUT`` is set.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS_CORR = ROOT / "docs" / "case_studies_results.correlations.csv"


def _rhos_from_rows(rows):
    """{(degradation, layer, measure, kind): rho} from correlation rows."""
    out = {}
    for r in rows:
        rho = r["rho"]
        rho = float(rho) if rho not in ("", None) else float("nan")
        out[(r["degradation"], r["layer"], r["measure"], r["kind"])] = rho
    return out


def _run(seed, n_jobs):
    from sklearn_peek.studies import run_paper_studies

    t0 = time.perf_counter()
    res = run_paper_studies("full", n_jobs=n_jobs, progress=False, random_state=seed)
    corr = res.correlations
    rows = corr.to_dict("records") if hasattr(corr, "to_dict") else list(corr)
    return _rhos_from_rows(rows), time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument(
        "--with-docs", action="store_true", help="seed 0 from the docs' table"
    )
    args = parser.parse_args()

    by_seed, wall = {}, {}
    if args.with_docs:
        with open(DOCS_CORR, newline="") as fh:
            by_seed[0] = _rhos_from_rows(csv.DictReader(fh))
    for seed in args.seeds:
        if seed in by_seed:
            continue
        by_seed[seed], wall[seed] = _run(seed, args.n_jobs)
        print(f"seed {seed}: {wall[seed]:.1f} s", flush=True)
    seeds = sorted(by_seed)
    keys = sorted(set.intersection(*(set(v) for v in by_seed.values())))

    spread = {}
    head = " | ".join(f"seed {s}" for s in seeds)
    print(f"\n| study | layer | measure | kind | {head} | spread |")
    print("|---|---|---|---|" + "---:|" * (len(seeds) + 1))
    for key in keys:
        vals = [by_seed[s][key] for s in seeds]
        finite = [v for v in vals if v == v]
        if len(finite) < 2 or key[3] == "rankme":
            continue  # RankMe does not depend on the sweeps' seeds
        spread[key] = max(finite) - min(finite)
        cells = " | ".join("" if v != v else f"{v:+.2f}" for v in vals)
        print(f"| {' | '.join(key)} | {cells} | {spread[key]:.2f} |")

    summary = defaultdict(list)
    for (deg, _layer, measure, kind), s in spread.items():
        where = "pooled" if deg == "all" else "single study"
        summary[(where, f"{measure} ({kind})")].append(s)
    print("\n| correlations | measure | median spread | largest | n |")
    print("|---|---|---:|---:|---:|")
    table = []
    for (where, measure), vals in sorted(summary.items()):
        med, top = statistics.median(vals), max(vals)
        print(f"| {where} | {measure} | {med:.2f} | {top:.2f} | {len(vals)} |")
        table.append({"where": where, "measure": measure, "median": med, "max": top})

    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        payload = {
            "seeds": seeds,
            "wall_s": wall,
            "rho": {str(s): {"|".join(k): by_seed[s][k] for k in keys} for s in seeds},
            "summary": table,
        }
        with open(Path(out) / "case_study_seed_spread.json", "w") as fh:
            json.dump(payload, fh, indent=1)


if __name__ == "__main__":
    main()
