# DN-Deformable-DETR with a ResNet-50 backbone (detrex `projects/dn_deformable_detr/configs/models/
# dn_deformable_detr_r50.py`): FFN 2048, no dropout, box refinement, 5 denoising groups.
import torch.nn as nn

from detrex.config import LazyCall as L
from detrex.layers import PositionEmbeddingSine, ShapeSpec
from detrex.modeling.backbone import BasicStem, ResNet
from detrex.modeling.matcher import HungarianMatcher
from detrex.modeling.neck import ChannelMapper
from projects.dn_deformable_detr.modeling import (
    DNCriterion,
    DNDeformableDETR,
    DNDeformableDetrTransformer,
    DNDeformableDetrTransformerDecoder,
    DNDeformableDetrTransformerEncoder,
)

num_feature_levels = 4

model = L(DNDeformableDETR)(
    backbone=L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=False, norm="FrozenBN"),
        out_features=["res3", "res4", "res5"],  # strides 8, 16, 32
        freeze_at=1,
    ),
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
        kernel_size=1,
        norm_layer=L(nn.GroupNorm)(num_groups=32, num_channels=256),
    ),
    transformer=L(DNDeformableDetrTransformer)(
        encoder=L(DNDeformableDetrTransformerEncoder)(
            embed_dim=256,
            num_heads=8,
            feedforward_dim=2048,
            attn_dropout=0.0,
            ffn_dropout=0.0,
            num_layers=6,
            post_norm=False,
            num_feature_levels=num_feature_levels,
        ),
        decoder=L(DNDeformableDetrTransformerDecoder)(
            embed_dim=256,
            num_heads=8,
            feedforward_dim=2048,
            attn_dropout=0.0,
            ffn_dropout=0.0,
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
    as_two_stage=False,
    denoising_groups=5,
    label_noise_prob=0.2,
    box_noise_scale=0.4,
    with_indicator=True,
    criterion=L(DNCriterion)(
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
            "loss_class": 1,
            "loss_bbox": 5.0,
            "loss_giou": 2.0,
            "loss_class_dn": 1,
            "loss_bbox_dn": 5.0,
            "loss_giou_dn": 2.0,
        },
        loss_class_type="focal_loss",
        alpha=0.25,
        gamma=2.0,
    ),
    pixel_mean=[123.675, 116.280, 103.530],
    pixel_std=[58.395, 57.120, 57.375],
    select_box_nums_for_evaluation=300,
)

# Auxiliary losses (matching and denoising parts): one copy of the weights per intermediate decoder layer.
if model.aux_loss:
    weight_dict = model.criterion.weight_dict
    aux_weight_dict = {}
    for i in range(model.transformer.decoder.num_layers - 1):
        aux_weight_dict.update({k + f"_{i}": v for k, v in weight_dict.items()})
    weight_dict.update(aux_weight_dict)
    model.criterion.weight_dict = weight_dict
