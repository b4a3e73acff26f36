"""Run the paper's case studies on the digits and write the results to docs/.

Usage::

    python benchmarks/run_case_studies.py                 # full preset, 2 workers
    python benchmarks/run_case_studies.py --preset quick
    python benchmarks/run_case_studies.py --n-jobs 1 --no-write

The full preset trains 60 LeNet-style networks (four case studies: data
fraction, unshuffled order, class subset, few epochs; five levels x three
seeds), extracts pool1, pool2, relu3 (fc1) and relu4 (fc2) on the 360 test
digits, selects a rank per layer with RankQualityScorer (bcv, elbow, energy;
coupled with the input and alone) and the RankMe effective rank, and relates
each to test accuracy with Spearman's rho and a bootstrap interval.

It prints where the time goes (training, extraction, sweeps) and writes
``docs/case_studies_results.csv`` (one row per network),
``docs/case_studies_results.correlations.csv`` and
``docs/case_studies_results.inc`` (RST tables included by
``docs/user_guide/case_studies.rst``).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
LABELS = {
    "bcv": "bcv (coupled)",
    "elbow": "elbow (coupled)",
    "energy": "energy (coupled)",
    "bcv_alone": "bcv (layer alone)",
    "elbow_alone": "elbow (layer alone)",
    "energy_alone": "energy (layer alone)",
    "rankme": "RankMe (layer alone)",
}
MEASURES = list(LABELS)  # the measures of studies.correlations, in table order
STUDY_ORDER = ["fraction", "unshuffled", "classes", "epochs", "all"]


def _grid_table(header, rows):
    """An RST grid table from a header and rows of strings."""
    cols = list(zip(header, *rows))
    widths = [max(len(str(c)) for c in col) for col in cols]
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    hsep = sep.replace("-", "=")

    def line(cells):
        return "|" + "|".join(f" {c!s:<{w}} " for c, w in zip(cells, widths)) + "|"

    out = [sep, line(header), hsep]
    for r in rows:
        out += [line(r), sep]
    return "\n".join(out)


def summary_by_level(table, layers):
    """Mean accuracy and mean selected ranks per (degradation, level)."""
    cols = ["accuracy"] + [f"{layer}_{m}" for layer in layers for m in MEASURES]
    return (
        table.groupby(["degradation", "level"], sort=False)[cols].mean().reset_index()
    )


def write_inc(path, table, corr, layers, timings_text):
    parts = [
        ".. This file is written by benchmarks/run_case_studies.py; do not edit.",
        "",
    ]
    # 1. accuracy and selected ranks per level (means over the seeds)
    summ = summary_by_level(table, layers)
    short = {"pool1": "p1", "pool2": "p2", "relu3": "fc1", "relu4": "fc2"}
    groups = [
        ("bcv", "bcv"),
        ("energy", "energy"),
        ("bcv_alone", "bcv alone"),
        ("rankme", "RankMe"),
    ]
    header = ["study", "level", "acc."] + [
        f"{label} {short.get(layer, layer)}" for m, label in groups for layer in layers
    ]
    rows = []
    for deg in [d for d in STUDY_ORDER if d in set(summ["degradation"])]:
        for _, r in summ[summ["degradation"] == deg].iterrows():
            cells = [deg, f"{r['level']:g}", f"{r['accuracy']:.2f}"]
            cells += [f"{r[f'{layer}_{m}']:.1f}" for m, _ in groups for layer in layers]
            rows.append(cells)
    parts += [
        ".. _case_studies_levels:",
        "",
        "**Accuracy and selected rank per level** (means over the three seeds; "
        "p1 = pool1, p2 = pool2, fc1 = relu3, fc2 = relu4; bcv and energy coupled "
        "with the input; the elbow columns are in the CSV file)",
        "",
        _grid_table(header, rows),
        "",
    ]
    # 2. correlations: one table per study, rows = measure, columns = layer
    for deg in [d for d in STUDY_ORDER if d in set(corr["degradation"])]:
        sub = corr[corr["degradation"] == deg]
        n = int(sub["n"].iloc[0])
        header = [
            "measure",
            *[f"{layer} ({short.get(layer, layer)})" for layer in layers],
        ]
        rows = []
        for m in MEASURES:
            cells = [LABELS[m]]
            for layer in layers:
                r = sub[(sub["layer"] == layer) & (sub["measure"] == m)].iloc[0]
                if r["rho"] != r["rho"]:
                    cells.append("n/a (constant)")
                elif r["ci_low"] != r["ci_low"]:  # see the note column
                    cells.append(f"{r['rho']:+.2f} [no interval]")
                else:
                    cells.append(
                        f"{r['rho']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
                    )
            rows.append(cells)
        title = "all 60 networks pooled" if deg == "all" else f"study '{deg}'"
        parts += [
            f"**Spearman rho(rank, accuracy), {title}** ({n} networks; 95% "
            "percentile bootstrap interval; none when more than 10% of the "
            "resamples have a constant rank, see the note column of the CSV file)",
            "",
            _grid_table(header, rows),
            "",
        ]
    parts += ["**Run time** (``python benchmarks/run_case_studies.py``)", "", "::", ""]
    parts += ["    " + line for line in timings_text.splitlines()]
    parts.append("")
    Path(path).write_text("\n".join(parts))


def timing_report(result, n_jobs, elapsed, load_before, load_after):
    t = result.timings
    phases = [
        ("training", "training the networks"),
        ("extraction", "extracting activations"),
        ("rankme", "RankMe (SVD)"),
        ("sweep_coupled", "rank sweeps, coupled"),
        ("sweep_alone", "rank sweeps, layer alone"),
    ]
    work = sum(t[k] for k, _ in phases)
    cpu = sum(t[f"{k}_cpu"] for k, _ in phases)
    lines = [
        f"preset={result.preset!r}  networks={t['n_networks']}  n_jobs={n_jobs}  "
        f"cpus={os.cpu_count()}  python {platform.python_version()}",
        f"load average (1 min) before/after: {load_before:.1f} / {load_after:.1f}",
        f"wall time (whole run)           {elapsed:8.1f} s",
        "per phase, summed over networks:   wall s      CPU s   (share of CPU)",
    ]
    for key, label in phases:
        lines.append(
            f"  {label:<30}{t[key]:8.1f}   {t[key + '_cpu']:8.1f}   "
            f"({100 * t[key + '_cpu'] / cpu:4.1f} %)"
        )
    lines.append(f"  {'total':<30}{work:8.1f}   {cpu:8.1f}")
    lines.append(
        f"CPU seconds / {n_jobs} workers = {cpu / n_jobs:.1f} s: the wall time this "
        "run needs on an otherwise idle machine (plus worker start-up)"
    )
    lines.append("per study (wall):")
    for deg, tt in t["per_study"].items():
        lines.append(f"  {deg:<30}{tt['wall']:8.1f} s  ({tt['n_networks']} networks)")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="full", choices=["quick", "full"])
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="only print")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="re-write docs/case_studies_results.inc from the CSV files of a "
        "previous full run, without running anything",
    )
    parser.add_argument(
        "--recompute-correlations",
        action="store_true",
        help="with --render-only: recompute the correlations file from the "
        "per-network CSV (e.g. after a change to the statistics), then render",
    )
    args = parser.parse_args(argv)

    import pandas as pd

    from sklearn_peek.studies import (
        DEFAULT_LAYERS,
        PRESETS,
        correlations,
        run_paper_studies,
    )

    docs = ROOT / "docs"
    if args.render_only:
        table = pd.read_csv(docs / "case_studies_results.csv")
        corr = pd.read_csv(docs / "case_studies_results.correlations.csv")
        corr["note"] = corr["note"].fillna("")
        if args.recompute_correlations:
            # as run_paper_studies: per degradation, then all networks pooled
            # (the full preset's criteria; 2,000 resamples, seed 0 by default)
            kw = dict(layers=DEFAULT_LAYERS, criteria=list(PRESETS["full"]["criteria"]))
            new = pd.concat(
                [correlations(table, **kw), correlations(table, group=None, **kw)],
                ignore_index=True,
            )
            same = ["degradation", "layer", "measure", "n"]
            assert (new[same].astype(str) == corr[same].astype(str)).all().all()
            assert np.allclose(new["rho"], corr["rho"], equal_nan=True)
            corr = new
            corr.to_csv(docs / "case_studies_results.correlations.csv", index=False)
            print(f"wrote {docs / 'case_studies_results.correlations.csv'}")
        report = (docs / "case_studies_results.timings.txt").read_text()
        write_inc(
            docs / "case_studies_results.inc", table, corr, DEFAULT_LAYERS, report
        )
        print(f"wrote {docs / 'case_studies_results.inc'}")
        return 0

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    result = run_paper_studies(args.preset, n_jobs=args.n_jobs, progress=args.progress)
    elapsed = time.perf_counter() - start
    load_after = os.getloadavg()[0]
    layers = next(iter(result.studies.values())).settings["layers"]

    report = timing_report(result, args.n_jobs, elapsed, load_before, load_after)
    print(report)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 50)
    pd.set_option("display.max_rows", 500)
    print("\nMean accuracy and coupled ranks per level:")
    summ = summary_by_level(result.table, layers)
    keep = ["degradation", "level", "accuracy"] + [
        f"{layer}_{m}" for layer in layers for m in ("bcv", "elbow", "energy", "rankme")
    ]
    print(summ[keep].round(2).to_string(index=False))
    print("\nSpearman rho(rank, accuracy) [95% bootstrap CI]:")
    corr = result.correlations.copy()
    corr["rho [CI]"] = [
        "n/a (" + note + ")"
        if r != r
        else f"{r:+.2f} [{lo:+.2f}, {hi:+.2f}]"
        if lo == lo
        else f"{r:+.2f} ({note})"
        for r, lo, hi, note in zip(
            corr["rho"], corr["ci_low"], corr["ci_high"], corr["note"]
        )
    ]
    wide = corr.pivot_table(
        index=["degradation", "measure"],
        columns="layer",
        values="rho [CI]",
        aggfunc="first",
        sort=False,
    )
    print(wide.to_string())

    if not args.no_write and args.preset == "full":
        result.table.to_csv(docs / "case_studies_results.csv", index=False)
        result.correlations.to_csv(
            docs / "case_studies_results.correlations.csv", index=False
        )
        (docs / "case_studies_results.timings.txt").write_text(report + "\n")
        write_inc(
            docs / "case_studies_results.inc",
            result.table,
            result.correlations,
            layers,
            report,
        )
        print(
            f"\nwrote {docs / 'case_studies_results.csv'}, "
            "case_studies_results.correlations.csv, case_studies_results.inc"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
