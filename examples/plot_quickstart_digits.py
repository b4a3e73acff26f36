"""
Quick start: look inside a small CNN trained on the digits
===========================================================

This example walks through the whole analysis on scikit-learn's 8x8 digits,
which ship with scikit-learn (no download):

1. train a small LeNet-style network with
   :class:`~sklearn_peek.studies.LeNetClassifier`;
2. read the raw pixels and the hidden layers of the unlabelled test images
   with :class:`~sklearn_peek.LayerActivationExtractor`;
3. factorize pixels and layers jointly with
   :class:`~sklearn_peek.CoupledNMF`, one sample factor shared by all blocks;
4. draw what each latent factor looks like in the input and which units of
   each layer carry it;
5. ask :class:`~sklearn_peek.RankQualityScorer` how many components each
   (input, layer) pair supports, without labels.

Set the environment variable ``SKLEARN_PEEK_EXAMPLE_QUICK=1`` to run it on
smaller settings (the test suite does).
"""

import os

import matplotlib.pyplot as plt
import numpy as np

from sklearn_peek import CoupledNMF, LayerActivationExtractor, RankQualityScorer
from sklearn_peek.plotting import (
    plot_input_factors,
    plot_layer_factors,
    plot_rank_sweep,
    plot_sample_loadings,
)
from sklearn_peek.studies import LeNetClassifier, digits_split

QUICK = os.environ.get("SKLEARN_PEEK_EXAMPLE_QUICK", "0") not in ("", "0")

# %%
# Train a network
# ---------------
# :func:`~sklearn_peek.studies.digits_split` gives a fixed, stratified split:
# 1,437 training and 360 test images of shape (1, 8, 8), float32 in [0, 1].
# Labels are used here to train the network and nowhere in the analysis.

data = digits_split(random_state=0)
clf = LeNetClassifier(epochs=3 if QUICK else 10, random_state=0)
clf.fit(data.X_train, data.y_train)
accuracy = clf.score(data.X_test, data.y_test)
print(f"test accuracy after {clf.n_epochs_} epochs: {accuracy:.3f}")

# %%
# Extract the hidden layers
# -------------------------
# ``clf.module_`` is a plain :class:`torch.nn.Module`. We probe the two
# pooling steps and the two hidden fully connected layers (after their ReLU),
# as the paper does. The result is one float32 matrix
# ``[input | pool1 | pool2 | relu3 | relu4]`` whose column names carry the
# block of each column (``"pool1__c3_y1_x2"``), so with
# ``set_output(transform="pandas")`` the blocks travel with the data.

X_test = data.X_test[:120] if QUICK else data.X_test
extractor = LayerActivationExtractor(
    clf.module_, layers=["pool1", "pool2", "relu3", "relu4"]
).set_output(transform="pandas")
A = extractor.fit_transform(X_test)
print("blocks:", extractor.block_sizes_)

# %%
# Coupled factorization
# ---------------------
# ``blocks="auto"`` splits the columns at the first ``"__"`` of their names.
# Each block is scaled to unit norm (``block_weights="norm"``), so the 120
# units of ``relu3`` and the 64 pixels count the same.

model = CoupledNMF(n_components=6 if QUICK else 10, blocks="auto", random_state=0)
W = model.fit_transform(A)
print("blocks found:", model.block_names_)
X = A.to_numpy()
for name, cols in model.block_slices_.items():
    rel = model.block_reconstruction_err_[name] / np.linalg.norm(X[:, cols])
    print(f"  {name:6s} relative error {rel:.3f}")

# %%
# Each factor as an input pattern, and where it lives in each layer
# -----------------------------------------------------------------
# A row of the input block of ``components_`` reshaped to 8x8 is the pixel
# pattern of one latent factor. The heatmaps show, per layer, which channels
# (conv layers, summed over space) or units respond to that pattern. With
# ``normalize="unit"`` each row is scaled to its maximum, so a channel shows
# which factors it prefers even when a few very active channels would
# otherwise dominate every column. The last figure shows the shared sample
# factor ``W``, rows grouped by class (labels used for the picture only).

plot_input_factors(model)
plot_layer_factors(model, layer_shapes=extractor, normalize="unit")
plot_sample_loadings(W, data.y_test[: len(X_test)])

# %%
# How many components does each layer support?
# --------------------------------------------
# For every layer, the scorer sweeps the rank of the coupled
# ``[input | layer]`` factorization and picks it by bi-cross-validation:
# fit on some images, predict held-out columns of the other images from their
# held-in columns. Per the paper, better trained networks support more
# components. A sparse grid reaching well above the expected rank keeps the
# sweep cheap; a rank selected at the top of the grid means the grid was too
# short.

scorer = RankQualityScorer(
    ranks=range(1, 7) if QUICK else [1, 2, 4, 6, 8, 10, 15, 20, 25, 30],
    cv=3,
    tol=1e-3,
    random_state=0,
)
scorer.fit(A)
print("selected rank per layer:", scorer.rank_)
plot_rank_sweep(scorer)
plt.show()
