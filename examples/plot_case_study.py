"""
Case study: does the rank a layer supports track how well it was trained?
=========================================================================

Saini & Papalexakis (2018) trained CNNs badly on purpose and observed that the
coupled (input, layer) factorization then supports a lower rank. This example
reproduces one of their case studies, *too few epochs*, on the digits with
:func:`sklearn_peek.studies.run_case_study`:

* one LeNet-style network per number of epochs (0 = untrained);
* its test accuracy, the only use of labels, to check the claim;
* for each probed layer, the rank selected by bi-cross-validation on the
  unlabelled test images, coupled with the input, plus two label-free
  baselines: the rank of the layer alone and its effective rank (RankMe);
* Spearman's correlation between rank and accuracy, with a bootstrap interval.

Four networks and one seed make a demonstration, not evidence: the intervals
are wide. :func:`sklearn_peek.studies.run_paper_studies` runs all four of the
paper's studies with several seeds (``preset="full"``, 60 networks, 133 s
with ``n_jobs=2`` on an idle 2-core machine), and
:doc:`/user_guide/case_studies` reports what we found.

Set ``SKLEARN_PEEK_EXAMPLE_QUICK=1`` to run it on smaller settings.
"""

import os

import matplotlib.pyplot as plt
import pandas as pd  # the study's tables (pip install "sklearn-peek[examples]")

from sklearn_peek.plotting import plot_rank_sweep, plot_rank_vs_quality
from sklearn_peek.studies import digits_split, run_case_study

QUICK = os.environ.get("SKLEARN_PEEK_EXAMPLE_QUICK", "0") not in ("", "0")

# %%
# Run the study
# -------------
# ``n_jobs=2`` would train and analyse two networks at a time (one thread
# each); on a busy two-core machine one process is as fast.

data = digits_split(random_state=0)
if QUICK:
    d = data
    data = (d.X_train, d.y_train, d.X_test[:120], d.y_test[:120])

levels = [0, 3] if QUICK else [0, 1, 3, 10]
layers = ["relu3"] if QUICK else ["pool2", "relu3"]
result = run_case_study(
    "epochs",
    levels,
    seeds=[0],
    data=data,
    layers=layers,
    ranks=[1, 2, 4, 8] if QUICK else [1, 2, 4, 6, 8, 10, 15, 20, 25, 30],
    criteria=["bcv"],
    n_boot=200 if QUICK else 2000,
    random_state=0,
)

# %%
# One row per network
# -------------------
# ``<layer>_bcv`` is the rank coupled with the input, ``<layer>_bcv_alone``
# the rank of the layer alone, ``<layer>_rankme`` the effective rank.

table = pd.DataFrame(result.table)
columns = ["level", "accuracy"] + [
    f"{layer}_{m}" for layer in layers for m in ("bcv", "bcv_alone", "rankme")
]
print(table[columns].round(3).to_string(index=False))
print()
corr = pd.DataFrame(result.correlations)
# ``note`` says why rho or its interval is missing (NaN): e.g. the rank was
# the same for every network, or in too many bootstrap resamples
cols = ["layer", "measure", "rho", "ci_low", "ci_high", "note"]
print(corr[cols].round(2).to_string(index=False, max_colwidth=90))
print(f"\nwall time {result.timings['wall']:.1f} s")

# %%
# Rank against accuracy
# ---------------------
# One point per network, coloured by the number of epochs. The title gives
# Spearman's rho with its 95% bootstrap interval, as computed by the runner
# ("no interval" or "undefined" when the note above says why there is none).

fig, axes = plt.subplots(
    1, len(layers), figsize=(4.5 * len(layers), 3.8), layout="constrained"
)
axes = [axes] if len(layers) == 1 else list(axes)
for ax, layer in zip(axes, layers):
    row = corr[(corr["layer"] == layer) & (corr["measure"] == "bcv")].iloc[0]
    spearman = (row["rho"], row["ci_low"], row["ci_high"])
    plot_rank_vs_quality(table, layer=layer, criterion="bcv", spearman=spearman, ax=ax)

# %%
# The sweeps behind the best and the worst network
# ------------------------------------------------
# ``result.curves[(level, seed)]`` holds the bi-cross-validation curve of
# every (layer, criterion); the selected rank is marked.

layer = layers[-1]
curves = {
    f"{layer}, {lv} epochs": result.curves[(lv, 0)][(layer, "bcv")]
    for lv in (levels[0], levels[-1])
}
plot_rank_sweep(curves, criterion="bcv")
plt.show()
