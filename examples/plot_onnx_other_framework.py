"""
A model from another framework, through ONNX
=============================================

sklearn_peek reads any network saved as ONNX, whatever framework trained it
(TensorFlow/Keras through tf2onnx, MXNet, Chainer, scikit-learn through
skl2onnx...). Here a scikit-learn :class:`~sklearn.neural_network.MLPClassifier`
is trained on the digits, exported with `skl2onnx
<https://onnx.ai/sklearn-onnx/>`_ (``pip install skl2onnx``, part of the
``examples`` extra), and analysed
like any other network: the extractor exposes the hidden ONNX tensors as
graph outputs, which onnxruntime's graph optimizations do not fuse away (the
optimized graph is checked against the unoptimized one before it is used).

Set ``SKLEARN_PEEK_EXAMPLE_QUICK=1`` to run it on smaller settings.
"""

import os
import warnings

import matplotlib.pyplot as plt
import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from sklearn_peek import (
    CoupledNMF,
    LayerActivationExtractor,
    RankQualityScorer,
    available_layers,
)
from sklearn_peek.plotting import plot_input_factors, plot_layer_factors

QUICK = os.environ.get("SKLEARN_PEEK_EXAMPLE_QUICK", "0") not in ("", "0")

# %%
# Train and export
# ----------------
# Two hidden ReLU layers of 64 and 32 units on the 64 pixels of each digit,
# scaled to [0, 1]. The ONNX file is written in the current folder.

X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=0.25, random_state=0, stratify=y
)
mlp = MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=300, random_state=0)
mlp.fit(X_train, y_train)
print(f"MLP test accuracy: {mlp.score(X_test, y_test):.3f}")

onnx_path = "mlp_digits.onnx"
onx = to_onnx(mlp, X_train[:1], options={"zipmap": False})
with open(onnx_path, "wb") as f:
    f.write(onx.SerializeToString())

# %%
# What can be read from the file?
# -------------------------------
# :func:`~sklearn_peek.available_layers` lists every intermediate tensor with
# its operation and per-sample shape; ``auto`` marks the non-negative
# activations the extractor takes by default (here the two ``Relu`` outputs).

for row in available_layers(onnx_path):
    mark = "auto" if row["auto"] else ""
    print(f"{row['name']:24s} {row['op_type']:10s} {row['shape']!s:8s} {mark}")

# %%
# Extract and factorize
# ---------------------
# Without pandas output the extractor returns a plain float32 array; its
# ``block_sizes_`` tell CoupledNMF where each block starts.

X_images = X_test[:150] if QUICK else X_test
extractor = LayerActivationExtractor(onnx_path, layers="auto")
A = extractor.fit_transform(X_images)
print("blocks:", extractor.block_sizes_, "dtype:", A.dtype)

model = CoupledNMF(n_components=8, blocks=extractor.block_sizes_, random_state=0)
W = model.fit_transform(A)
for name, cols in model.block_slices_.items():
    rel = model.block_reconstruction_err_[name] / np.linalg.norm(A[:, cols])
    print(f"{name:18s} relative error {rel:.3f}")
plot_input_factors(model, image_shape=(8, 8))
plot_layer_factors(model)

# %%
# The rank each hidden layer supports
# -----------------------------------
# Given the extractor, the scorer takes the images directly.

ranks = range(1, 7) if QUICK else [1, 2, 4, 6, 8, 10, 15, 20, 25, 30]
scorer = RankQualityScorer(
    extractor=extractor, ranks=ranks, cv=3, tol=1e-3, random_state=0
)
scorer.fit(X_images)
print("selected rank per layer:", scorer.rank_)

# %%
# Compare two networks without labels
# -----------------------------------
# Called as ``scorer(model, X)``, the scorer returns the mean selected rank
# divided by the largest rank tried (higher is better). Here it compares the
# trained MLP with one stopped after a single pass over the data. The paper
# reports that better trained CNNs support more components; check it rather
# than assume it. A barely trained fully connected layer is close to a random
# ReLU projection of the pixels, which keeps much of their structure, so the
# gap can be small, and a rank grid that stops too low (both networks at its
# top) hides it. The case-study example and :doc:`/user_guide/case_studies`
# look at this across many networks and layers.

with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    weak = MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=1, random_state=0)
    weak.fit(X_train, y_train)
weak_path = "mlp_digits_1_epoch.onnx"
with open(weak_path, "wb") as f:
    f.write(to_onnx(weak, X_train[:1], options={"zipmap": False}).SerializeToString())

label_free = {
    "1 epoch": scorer(weak_path, X_images),
    f"{mlp.n_iter_} epochs": scorer(onnx_path, X_images),
}
accuracy = {
    "1 epoch": weak.score(X_test, y_test),
    f"{mlp.n_iter_} epochs": mlp.score(X_test, y_test),
}
for name, value in label_free.items():
    print(f"{name:10s} label-free score {value:.2f}   accuracy {accuracy[name]:.3f}")
plt.show()
