"""Hidden-layer activations from PyTorch modules and ONNX models."""

from ._base import LayerActivationExtractor, NegativeActivationError, available_layers
from ._channels import ChannelMismatchError, UnknownLayerError

__all__ = [
    "ChannelMismatchError",
    "LayerActivationExtractor",
    "NegativeActivationError",
    "UnknownLayerError",
    "available_layers",
]
