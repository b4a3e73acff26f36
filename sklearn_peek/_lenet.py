"""A LeNet-style convolutional network sized to its input (private).

The module has exactly the named submodules ``conv1, relu1, pool1, conv2,
relu2, pool2, fc1, relu3, fc2, relu4, fc3``; the flatten step between
``pool2`` and ``fc1`` is functional so that it does not show up as a layer.
The ReLUs are separate, non-inplace modules, so a forward hook on any of
them sees a tensor that is not overwritten later.

Sizes follow the input:

- 1x28x28 (MNIST): the classic LeNet-5 (conv 1->6 k5 pad 2, 2x2 max pool,
  conv 6->16 k5, 2x2 max pool, fc 400-120-84-n_classes).
- 3x32x32 (CIFAR-like): conv 3->6 k5, pool, conv 6->16 k5, pool, fc 400-120-84.
- small images such as the 1x8x8 digits: 3x3 kernels with padding 1, so the
  two pools give 16x2x2 = 64 features before fc1.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _conv_plan(input_shape):
    """Return (kernel, pad1, pad2) for an input of shape (C, H, W)."""
    _, height, width = input_shape
    side = min(height, width)
    if side >= 32:
        return 5, 0, 0
    if side >= 16:
        return 5, 2, 0
    return 3, 1, 1


def _after(size, kernel, pad):
    conv = size + 2 * pad - kernel + 1
    return conv // 2


def lenet_feature_shape(input_shape):
    """Shape (16, h, w) of ``pool2`` for an input of shape (C, H, W).

    Raises
    ------
    ValueError
        If the image is too small for two conv + pool stages.
    """
    channels, height, width = (int(v) for v in input_shape)
    kernel, pad1, pad2 = _conv_plan((channels, height, width))
    h = _after(_after(height, kernel, pad1), kernel, pad2)
    w = _after(_after(width, kernel, pad1), kernel, pad2)
    if h < 1 or w < 1:
        raise ValueError(
            f"input_shape={tuple(input_shape)!r} is too small for a LeNet-style "
            "network (two conv + 2x2 pool stages); expected images of at least "
            "4x4 pixels, e.g. (1, 8, 8), (1, 28, 28) or (3, 32, 32)."
        )
    return 16, h, w


class LeNet(nn.Module):
    """LeNet-style CNN sized to ``input_shape``; see :mod:`sklearn_peek._lenet`.

    Parameters
    ----------
    input_shape : tuple of int
        ``(channels, height, width)`` of one input image.
    n_classes : int
        Width of the output layer ``fc3``.
    """

    def __init__(self, input_shape, n_classes):
        super().__init__()
        channels = int(input_shape[0])
        kernel, pad1, pad2 = _conv_plan(input_shape)
        n_flat = math.prod(lenet_feature_shape(input_shape))
        self.input_shape = tuple(int(v) for v in input_shape)
        self.conv1 = nn.Conv2d(channels, 6, kernel, padding=pad1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, kernel, padding=pad2)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(n_flat, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(84, int(n_classes))

    def forward(self, x):
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        # Functional flatten: not a named layer, so "auto" layer lists stay
        # the eleven documented names.
        x = torch.flatten(x, 1)
        x = self.relu3(self.fc1(x))
        x = self.relu4(self.fc2(x))
        return self.fc3(x)


def build_lenet(input_shape, n_classes):
    """Build a freshly initialised :class:`LeNet` (seed torch before calling)."""
    return LeNet(input_shape, n_classes)
