# Deformable-DETR with a ResNet-50 backbone (detrex `projects/deformable_detr/configs/models/deformable_detr_r50.py`;
# the architecture of the KS-DETR authors' baseline: FFN 1024, dropout 0.1, no box refinement, one stage).
import torch.nn as nn

from detrex.config import LazyCall as L
from detrex.config import get_config
from detrex.layers import PositionEmbeddingSine, ShapeSpec
from detrex.modeling.matcher import HungarianMatcher
from detrex.modeling.neck import ChannelMapper
from projects.deformable_detr.modeling import (
    DeformableCriterion,
    DeformableDETR,
    DeformableDetrTransformer,
    DeformableDetrTransformerDecoder,
    DeformableDetrTransformerEncoder,
)

num_feature_levels = 4

# the FrozenBN ResNet-50 of configs/common/backbone/resnet50.py, strides 8, 16, 32 only (the neck's inputs)
_backbone = get_config("common/backbone/resnet50.py").backbone
_backbone.out_features = ["res3", "res4", "res5"]

model = L(DeformableDETR)(
    backbone=_backbone,
    # 128 channels per axis; Deformable-DETR normalizes positions with a -0.5 offset (pixel centres)
    position_embedding=L(PositionEmbeddingSine)(num_pos_feats=128, temperature=10000, normalize=True, offset=-0.5),
    neck=L(ChannelMapper)(
        input_shapes={
            "res3": L(ShapeSpec)(channels=512),
            "res4": L(ShapeSpec)(channels=1024),
            "res5": L(ShapeSpec)(channels=2048),
        },
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        num_outs=num_feature_levels,  # + one 3x3 stride-2 conv on res5 (stride 64)
        kernel_size=1,  # the neck's default is 3; Deformable-DETR projects with 1x1 convs
        norm_layer=L(nn.GroupNorm)(num_groups=32, num_channels=256),
    ),
    transformer=L(DeformableDetrTransformer)(
        encoder=L(DeformableDetrTransformerEncoder)(
            embed_dim=256,
            num_heads=8,
            feedforward_dim=1024,
            attn_dropout=0.1,
            ffn_dropout=0.1,
            num_layers=6,
            post_norm=False,
            num_feature_levels=num_feature_levels,
        ),
        decoder=L(DeformableDetrTransformerDecoder)(
            embed_dim=256,
            num_heads=8,
            feedforward_dim=1024,
            attn_dropout=0.1,
            ffn_dropout=0.1,
            num_layers=6,
            return_intermediate=True,
            num_feature_levels=num_feature_levels,
        ),
        as_two_stage=False,
        num_feature_levels=num_feature_levels,
        two_stage_num_proposals=300,
    ),
    embed_dim=256,
    num_classes=80,
    num_queries=300,
    aux_loss=True,
    with_box_refine=False,
    as_two_stage=False,
    criterion=L(DeformableCriterion)(
        num_classes=80,
        matcher=L(HungarianMatcher)(
            cost_class=2.0,
            cost_bbox=5.0,
            cost_giou=2.0,
            cost_class_type="focal_loss_cost",
            alpha=0.25,
            gamma=2.0,
        ),
        weight_dict={
            "loss_class": 1.0,
            "loss_bbox": 5.0,
            "loss_giou": 2.0,
        },
        losses=["class", "boxes"],
        loss_class_type="focal_loss",
        alpha=0.25,
        gamma=2.0,
    ),
    pixel_mean=[123.675, 116.280, 103.530],  # ImageNet RGB mean, 0-255 scale
    pixel_std=[58.395, 57.120, 57.375],
    select_box_nums_for_evaluation=300,  # top-300 (query, class) pairs per image at inference
)

# Auxiliary losses: one copy of the weights per intermediate decoder layer (_0 .. _4) and for the two-stage
# encoder proposals (_enc; only produced when as_two_stage=True).
if model.aux_loss:
    weight_dict = model.criterion.weight_dict
    aux_weight_dict = {}
    for i in range(model.transformer.decoder.num_layers - 1):
        aux_weight_dict.update({k + f"_{i}": v for k, v in weight_dict.items()})
    aux_weight_dict.update({k + "_enc": v for k, v in weight_dict.items()})
    weight_dict.update(aux_weight_dict)
    model.criterion.weight_dict = weight_dict
