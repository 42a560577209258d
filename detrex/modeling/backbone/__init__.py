"""Backbones with detectron2's interface (`Backbone.output_shape`) and parameter names."""

from .backbone import Backbone
from .swin import SwinTransformer
from .resnet import BasicBlock, BasicStem, BottleneckBlock, CNNBlockBase, ResNet, make_stage

__all__ = ["Backbone", "ResNet", "BasicStem", "BasicBlock", "BottleneckBlock", "CNNBlockBase", "make_stage", "SwinTransformer"]
