"""Hidden-layer activations from PyTorch modules and ONNX models."""

from ._base import LayerActivationExtractor, NegativeActivationError, available_layers

__all__ = ["LayerActivationExtractor", "NegativeActivationError", "available_layers"]
