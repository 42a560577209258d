"""Detector components: backbones, matcher, criterion, losses and the shared `DETRBase`."""

from .backbone import Backbone, BasicBlock, BasicStem, BottleneckBlock, ResNet, SwinTransformer, make_stage
from .criterion import DNCriterion, SetCriterion
from .detr_base import DETRBase, detector_postprocess
from .losses import giou_loss, sigmoid_focal_loss
from .matcher import HungarianMatcher

__all__ = [
    "Backbone",
    "ResNet",
    "BasicStem",
    "BasicBlock",
    "BottleneckBlock",
    "make_stage",
    "SwinTransformer",
    "DNCriterion",
    "SetCriterion",
    "HungarianMatcher",
    "DETRBase",
    "detector_postprocess",
    "sigmoid_focal_loss",
    "giou_loss",
]
