"""`Backbone`: the interface every feature extractor implements (detectron2 semantics)."""

from abc import ABCMeta, abstractmethod
from typing import Dict

import torch.nn as nn

from detrex.layers.shape_spec import ShapeSpec

__all__ = ["Backbone"]


class Backbone(nn.Module, metaclass=ABCMeta):
    """A network mapping a (B, 3, H, W) image tensor to a dict of named feature maps.

    Subclasses set ``_out_features`` (names, in order), ``_out_feature_channels`` and
    ``_out_feature_strides`` (name -> int) and implement ``forward``.
    """

    def __init__(self):
        super().__init__()

    @abstractmethod
    def forward(self, x):
        """x: (B, C, H, W). Returns dict name -> (B, C_i, H_i, W_i)."""

    @property
    def size_divisibility(self) -> int:
        """Input height/width must be divisible by this (0: no constraint)."""
        return 0

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """name -> ShapeSpec(channels, stride) for every output feature."""
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }
