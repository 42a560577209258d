"""Augmentations and transforms with detectron2's behaviour (see :mod:`.augmentation`)."""

from .augmentation import (
    AugInput,
    Augmentation,
    AugmentationList,
    RandomCrop,
    RandomFlip,
    ResizeShortestEdge,
    apply_augmentations,
    apply_transform_gens,
)
from .transform import (
    CropTransform,
    HFlipTransform,
    NoOpTransform,
    ResizeTransform,
    Transform,
    TransformList,
    VFlipTransform,
)

__all__ = [k for k in globals().keys() if not k.startswith("_")]
