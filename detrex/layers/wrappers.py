"""`Conv2d` with optional normalization and activation (detectron2's wrapper, same state-dict names:
``<conv>.weight``, ``<conv>.bias``, ``<conv>.norm.*``)."""

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Conv2d"]


class Conv2d(nn.Conv2d):
    """`nn.Conv2d` that applies ``norm`` then ``activation`` after the convolution.

    Extra keyword args:
        norm (nn.Module, optional): registered as the submodule ``norm``.
        activation (callable, optional): e.g. ``F.relu``; not a submodule.
    """

    def __init__(self, *args, **kwargs):
        norm = kwargs.pop("norm", None)
        activation = kwargs.pop("activation", None)
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x
