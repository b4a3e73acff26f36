"""Hidden-layer activations from PyTorch modules and ONNX models."""

from ._base import LayerActivationExtractor, available_layers

__all__ = ["LayerActivationExtractor", "available_layers"]
