"""
Choose the rank with a Pipeline and GridSearchCV, without labels
================================================================

:class:`~sklearn_peek.LayerActivationExtractor` and
:class:`~sklearn_peek.CoupledNMF` are ordinary scikit-learn transformers, so
they chain in a :class:`~sklearn.pipeline.Pipeline` and the rank can be tuned
with :class:`~sklearn.model_selection.GridSearchCV`.

No labels are needed: :meth:`CoupledNMF.score <sklearn_peek.CoupledNMF.score>`
is a held-out measure (bi-cross-validation). For the images of a validation
fold it solves the sample factor from half of every block's columns and
scores the prediction of the other half, so a rank that only fits noise
scores worse, and the default scoring of ``GridSearchCV`` picks a sensible
rank.

Set ``SKLEARN_PEEK_EXAMPLE_QUICK=1`` to run it on smaller settings.
"""

import os

import matplotlib.pyplot as plt
import numpy as np
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from sklearn_peek import CoupledNMF, LayerActivationExtractor
from sklearn_peek.plotting import plot_input_factors
from sklearn_peek.studies import LeNetClassifier, digits_split

QUICK = os.environ.get("SKLEARN_PEEK_EXAMPLE_QUICK", "0") not in ("", "0")

# %%
# A trained network
# -----------------
# A small LeNet-style network trained on the digits (labels are used for the
# training only).

data = digits_split(random_state=0)
clf = LeNetClassifier(epochs=3 if QUICK else 10, random_state=0)
clf.fit(data.X_train, data.y_train)
print(f"test accuracy: {clf.score(data.X_test, data.y_test):.3f}")

# %%
# The pipeline
# ------------
# The extractor turns images into ``[input | relu3]``; with
# ``set_output(transform="pandas")`` its column names (``"input__p12"``,
# ``"relu3__u7"``) reach CoupledNMF, whose ``blocks="auto"`` splits them.

pipe = Pipeline(
    [
        ("extract", LayerActivationExtractor(clf.module_, layers=["relu3"])),
        ("nmf", CoupledNMF(blocks="auto", max_iter=100, tol=1e-3, random_state=0)),
    ]
).set_output(transform="pandas")

# %%
# Search over the rank
# --------------------
# Each candidate rank is fitted on two thirds of the unlabelled test images
# and scored on the other third. ``y`` is not passed: the search is
# label-free.

ranks = list(range(1, 9)) if QUICK else [1, 2, 4, 6, 8, 10, 12, 15, 20, 25, 30]
X = data.X_test[:150] if QUICK else data.X_test
search = GridSearchCV(pipe, {"nmf__n_components": ranks}, cv=3)
search.fit(X)
best_rank = search.best_params_["nmf__n_components"]
print(f"rank selected by GridSearchCV: {best_rank}")

mean = search.cv_results_["mean_test_score"]
std = search.cv_results_["std_test_score"]
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.errorbar(ranks, mean, yerr=std, marker="o", capsize=3)
ax.axvline(best_rank, color="tab:red", linestyle="--", label=f"best: {best_rank}")
ax.set_xlabel("n_components")
ax.set_ylabel("held-out score (higher is better)")
ax.set_title("CoupledNMF.score over 3 folds")
ax.legend()
fig.tight_layout()

# %%
# The best model
# --------------
# ``best_estimator_`` is refitted on all images. Its input factors show the
# pixel pattern of every latent factor shared by the input and ``relu3``.

best = search.best_estimator_
nmf = best.named_steps["nmf"]
plot_input_factors(nmf)

# %%
# New images from their pixels alone
# ----------------------------------
# ``transform`` also works from a subset of the blocks: here images are
# placed in the latent space from their pixels, without running the network,
# and compared with their placement from pixels and ``relu3`` together.

pixels = X.reshape(len(X), -1)
W_pixels = np.asarray(nmf.transform(pixels, blocks=["input"]))
W_full = np.asarray(best.transform(X))
cosine = np.sum(W_pixels * W_full, axis=1) / (
    np.linalg.norm(W_pixels, axis=1) * np.linalg.norm(W_full, axis=1) + 1e-12
)
print(f"W from pixels only: {W_pixels.shape}")
print(f"median cosine with W from pixels and relu3: {np.median(cosine):.2f}")
plt.show()
