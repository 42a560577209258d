"""The ResNet-50 backbone of the DETR-family R50 models (detectron2's ``ResNet`` with FrozenBN).

Use it inside a model config as ``backbone=get_config("common/backbone/resnet50.py").backbone`` and override
what differs: ``backbone.out_features`` (multi-scale models take ``["res3", "res4", "res5"]``),
``backbone.stages.depth = 101`` for R101. Weights: torchvision's ImageNet ResNet converted to detectron2 names
(``train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"``).
"""

from detrex.config import LazyCall as L
from detrex.modeling.backbone import BasicStem, ResNet

backbone = L(ResNet)(
    stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
    # torchvision-converted weights put the stride in the 3x3 conv
    stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=False, norm="FrozenBN"),
    out_features=["res2", "res3", "res4", "res5"],
    freeze_at=1,  # stem frozen; res2 trains (detectron2/detrex convention)
)
