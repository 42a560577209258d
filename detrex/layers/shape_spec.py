"""`ShapeSpec`: the shape of a feature map, as detectron2 describes backbone outputs."""

from dataclasses import dataclass
from typing import Optional

__all__ = ["ShapeSpec"]


@dataclass
class ShapeSpec:
    """Channels, spatial size and stride (w.r.t. the input image) of a feature map.

    Every field is optional; backbones fill ``channels`` and ``stride``.
    """

    channels: Optional[int] = None
    height: Optional[int] = None
    width: Optional[int] = None
    stride: Optional[int] = None
