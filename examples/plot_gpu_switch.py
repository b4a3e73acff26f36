"""
The GPU switch: ``device="auto"``
=================================

Every sklearn_peek estimator that does heavy work takes a ``device``
parameter with the same meaning everywhere:

* ``None`` or ``"cpu"``: the CPU (NumPy for the factorizations);
* ``"auto"``: the first CUDA GPU when torch sees one, else the CPU, quietly;
* ``"cuda"`` or ``"cuda:N"``: that GPU, and a clear error when it is absent.

Code written with ``device="auto"`` therefore runs unchanged on a laptop and
on a GPU server. This example runs wherever it is built (on the CPU when
there is no GPU), checks that ``"auto"`` gives the same numbers as the CPU
path there, and says what changes on a GPU.

Set ``SKLEARN_PEEK_EXAMPLE_QUICK=1`` to run it on smaller settings.
"""

import os
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from sklearn_peek import CoupledNMF, LayerActivationExtractor, RankQualityScorer
from sklearn_peek.plotting import plot_input_factors
from sklearn_peek.studies import LeNetClassifier, digits_split

QUICK = os.environ.get("SKLEARN_PEEK_EXAMPLE_QUICK", "0") not in ("", "0")

has_gpu = torch.cuda.is_available()
print("torch sees a CUDA GPU:", has_gpu)
print('device="auto" runs on:', torch.cuda.get_device_name(0) if has_gpu else "CPU")

# %%
# One switch for the whole analysis
# ---------------------------------
# Training, extraction, factorization and the rank sweep all take
# ``device="auto"``. Results come back as NumPy arrays on the CPU whatever the
# device, so the code after them does not change.

DEVICE = "auto"

data = digits_split(random_state=0)
X = data.X_test[:120] if QUICK else data.X_test
clf = LeNetClassifier(epochs=3 if QUICK else 10, random_state=0, device=DEVICE)
clf.fit(data.X_train, data.y_train)
print(f"test accuracy: {clf.score(data.X_test, data.y_test):.3f}")

extractor = LayerActivationExtractor(
    clf.module_, layers=["pool2", "relu3"], device=DEVICE
)
A = extractor.fit_transform(X)

timings = {}
start = time.perf_counter()
model = CoupledNMF(8, blocks=extractor.block_sizes_, random_state=0, device=DEVICE)
W = model.fit_transform(A)
timings['device="auto"'] = time.perf_counter() - start
print(f"W: {type(W).__name__} {W.dtype} {W.shape}")

# %%
# Same numbers as the CPU path
# ----------------------------
# Without a GPU, ``"auto"`` *is* the CPU path: the factors are identical. On a
# GPU they agree to float32 rounding, not bit for bit (the order of the
# floating-point sums differs, see below).

start = time.perf_counter()
model_cpu = CoupledNMF(8, blocks=extractor.block_sizes_, random_state=0)
W_cpu = model_cpu.fit_transform(A)
timings["device=None (CPU)"] = time.perf_counter() - start
max_diff = float(np.max(np.abs(W - W_cpu)))
print(f"largest difference between the two runs: {max_diff:.2e}")
for name, seconds in timings.items():
    print(f"  CoupledNMF fit with {name:18s} {seconds:.2f} s")

# %%
# The GPU code, tried on the CPU
# ------------------------------
# ``device=torch.device("cpu")`` runs the torch implementation of the solvers
# (the code a GPU runs) on the CPU. It is a way to check that code where
# there is no GPU: same initialization, same updates, same stopping rule, so
# the fits agree with the NumPy ones up to float32 rounding accumulated over
# the iterations: the same error, and factors that differ very little.

model_torch = CoupledNMF(
    8, blocks=extractor.block_sizes_, random_state=0, device=torch.device("cpu")
)
W_torch = model_torch.fit_transform(A)
torch_diff = float(np.max(np.abs(W_torch - W_cpu)) / np.max(np.abs(W_cpu)))
print(f"torch code on the CPU vs NumPy: largest relative difference {torch_diff:.1e}")
print(
    f"reconstruction error: NumPy {model_cpu.reconstruction_err_:.5f}, "
    f"torch {model_torch.reconstruction_err_:.5f}"
)

# %%
# The rank sweep takes the same switch.

scorer = RankQualityScorer(
    blocks=extractor.block_sizes_,
    ranks=[1, 2, 4, 8] if QUICK else [1, 2, 4, 6, 8, 10, 15, 20, 25, 30],
    cv=3,
    tol=1e-3,
    device=DEVICE,
    random_state=0,
)
print("selected rank per layer:", scorer.fit(A).rank_)
plot_input_factors(model)

# %%
# Asking for a GPU that is not there
# ----------------------------------
# ``device="cuda"`` never falls back silently: on a machine without a GPU it
# raises an error naming the argument and the way out.

if not has_gpu:
    try:
        CoupledNMF(4, device="cuda").fit(A)
    except ValueError as exc:
        print("ValueError:", exc)

# %%
# What changes on a GPU
# ---------------------
# * :class:`~sklearn_peek.studies.LeNetClassifier` trains on the GPU and
#   returns ``module_`` on the CPU.
# * :class:`~sklearn_peek.LayerActivationExtractor` runs torch models on the
#   GPU batch by batch (``batch_size``) and copies each batch's activations
#   back; ONNX models use onnxruntime's CUDA provider when ``onnxruntime-gpu``
#   is installed, else the CPU with a warning.
# * :class:`~sklearn_peek.CoupledNMF` and
#   :class:`~sklearn_peek.RankQualityScorer` run the solvers with torch on the
#   GPU (the code tried above on the CPU; see :doc:`/user_guide/gpu`). NumPy
#   input is computed in float32 there and the results come back as NumPy;
#   torch tensors given as input stay on their device and come back as
#   tensors. The numbers agree with the CPU to float32 rounding, not bit for
#   bit.
# * The gain grows with the matrix: for the digits here the CPU is fast
#   enough; for thousands of images and conv layers with tens of thousands of
#   units, and for sweeps over many ranks, the GPU pays off.
plt.show()
