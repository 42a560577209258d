# Deformable-DETR with a ResNet-50 backbone (detrex `projects/deformable_detr/configs/models/deformable_detr_r50.py`;
# the architecture of the KS-DETR authors' baseline: FFN 1024, dropout 0.1, no box refinement, one stage).
import torch.nn as nn

from detrex.config import LazyCall as L
from detrex.config import get_config
from detrex.config.recipes import with_aux_loss_weights
from detrex.layers import PositionEmbeddingSine, ShapeSpec
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

# the focal-loss criterion of configs/common/criterion/focal_set_criterion.py (weights class 1, L1 5, GIoU 2) as a
# DeformableCriterion, which also scores the two-stage encoder proposals (as_two_stage=True)
_criterion = get_config("common/criterion/focal_set_criterion.py").criterion
_criterion._target_ = DeformableCriterion
_criterion.weight_dict.loss_class = 1.0  # detrex's Deformable-DETR writes a float (DAB-DETR: the int 1)
_criterion.losses = ["class", "boxes"]  # the default, written out as in detrex

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
    criterion=_criterion,
    pixel_mean=[123.675, 116.280, 103.530],  # ImageNet RGB mean, 0-255 scale
    pixel_std=[58.395, 57.120, 57.375],
    select_box_nums_for_evaluation=300,  # top-300 (query, class) pairs per image at inference
)

# Auxiliary losses: one copy of the weights per intermediate decoder layer (_0 .. _4) and for the two-stage
# encoder proposals (_enc; only produced when as_two_stage=True).
model.criterion.weight_dict = with_aux_loss_weights(
    model.criterion.weight_dict, num_aux=model.transformer.decoder.num_layers - 1, enc=True
)
