"""Torch helpers shared by several test modules (imports torch).

Kept apart from ``_helpers`` so that modules without torch need not import it.
"""

import io
import warnings

import torch

from sklearn_peek._extract._onnx import torch_export_options

nn = torch.nn


class BasicBlock(nn.Module):
    """ResNet basic block; like torchvision's, one ReLU module runs twice.

    Parameters
    ----------
    c_in, c_out : int
        Input and output channels.
    stride : int, default=1
        Stride of ``conv1`` and of the projection shortcut.
    plain_shortcut : bool, default=False
        The projection shortcut ``down`` (used when the shape changes) is a
        bare biased ``Conv2d`` instead of a ``Sequential`` of an unbiased one.
    """

    def __init__(self, c_in, c_out, stride=1, *, plain_shortcut=False):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = None
        if stride != 1 or c_in != c_out:
            if plain_shortcut:
                self.down = nn.Conv2d(c_in, c_out, 1, stride)
            else:
                self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.down is None else self.down(x)))


def torch_to_onnx(net, sample_shape, **kw):
    """``net`` exported by torch.onnx's TorchScript exporter, as bytes."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = {**torch_export_options(), **kw}
        torch.onnx.export(net, torch.zeros(1, *sample_shape), buf, **kw)
    return buf.getvalue()
