"""`Conv2d` with optional normalization and activation (detectron2's wrapper, same state-dict names:
``<conv>.weight``, ``<conv>.bias``, ``<conv>.norm.*``)."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .batch_norm import FrozenBatchNorm2d

__all__ = ["Conv2d"]


class Conv2d(nn.Conv2d):
    """`nn.Conv2d` that applies ``norm`` then ``activation`` after the convolution.

    Extra keyword args:
        norm (nn.Module, optional): registered as the submodule ``norm``.
        activation (callable, optional): e.g. ``F.relu``; not a submodule.

    In eval mode a ``FrozenBatchNorm2d`` norm is folded into the convolution's weight and bias on the fly
    (the state dict is unchanged).
    """

    def __init__(self, *args, **kwargs):
        norm = kwargs.pop("norm", None)
        activation = kwargs.pop("activation", None)
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.norm, FrozenBatchNorm2d) and not self.training:
            # Eval mode: fold the frozen affine transform into the convolution, ``conv(x; W * s) + (b * s + t)``
            # (exact up to rounding; saves one pass over the activation: ~4% of a DETR R-50 eval call on CPU).
            # Training keeps the two separate steps, so trained weights do not depend on this shortcut.
            scale, shift = self.norm.scale_and_shift()
            weight = self.weight * scale.reshape(-1, 1, 1, 1).to(self.weight.dtype)
            bias = shift if self.bias is None else self.bias * scale + shift
            x = F.conv2d(x, weight, bias.to(weight.dtype), self.stride, self.padding, self.dilation, self.groups)
        else:
            x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
            if self.norm is not None:
                x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x
