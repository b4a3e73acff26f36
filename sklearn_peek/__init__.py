"""sklearn_peek: look inside a trained CNN through a coupled factorization lens.

The public names load lazily, so ``import sklearn_peek`` does not import
torch, onnxruntime or matplotlib until they are needed.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "CoupledNMF": "sklearn_peek._coupled_nmf",
    "LayerActivationExtractor": "sklearn_peek._extract",
    "available_layers": "sklearn_peek._extract",
    "NegativeActivationError": "sklearn_peek._extract",
    "UnknownLayerError": "sklearn_peek._extract",
    "ChannelMismatchError": "sklearn_peek._extract",
    "RankQualityScorer": "sklearn_peek._rank",
    "SweepLimitError": "sklearn_peek._rank",
    "EnergyThresholdWarning": "sklearn_peek._criteria",
    "fit_ranks": "sklearn_peek._coupled_nmf",
}

__all__ = [*sorted(_LAZY), "__version__", "datasets", "plotting", "studies"]

_SUBMODULES = {"datasets", "plotting", "studies", "cli"}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"sklearn_peek.{name}")
    raise AttributeError(f"module 'sklearn_peek' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
