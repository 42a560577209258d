# DAB-DETR with a ResNet-50 backbone (detrex `projects/dab_detr/configs/models/dab_detr_r50.py`).
import torch.nn as nn

from detrex.config import LazyCall as L
from detrex.config import get_config
from detrex.layers import PositionEmbeddingSine
from detrex.modeling.criterion import SetCriterion
from detrex.modeling.matcher import HungarianMatcher
from projects.dab_detr.modeling import (
    DABDETR,
    DabDetrTransformer,
    DabDetrTransformerDecoder,
    DabDetrTransformerEncoder,
)

model = L(DABDETR)(
    backbone=get_config("common/backbone/resnet50.py").backbone,  # FrozenBN ResNet-50, res2..res5
    in_features=["res5"],  # single-scale: stride-32 features only
    in_channels=2048,
    # DAB-DETR uses temperature 20 (not DETR's 10000); 128 channels per axis -> 256
    position_embedding=L(PositionEmbeddingSine)(num_pos_feats=128, temperature=20, normalize=True),
    transformer=L(DabDetrTransformer)(
        encoder=L(DabDetrTransformerEncoder)(
            embed_dim=256,
            num_heads=8,
            attn_dropout=0.0,
            feedforward_dim=2048,
            ffn_dropout=0.0,
            activation=L(nn.PReLU)(),  # one learned slope per layer (copied into each layer)
            num_layers=6,
        ),
        decoder=L(DabDetrTransformerDecoder)(
            embed_dim=256,
            num_heads=8,
            attn_dropout=0.0,
            feedforward_dim=2048,
            ffn_dropout=0.0,
            activation=L(nn.PReLU)(),
            num_layers=6,
            modulate_hw_attn=True,  # scale the positional attention by the anchor's width/height
        ),
    ),
    embed_dim=256,
    num_classes=80,
    num_queries=300,
    criterion=L(SetCriterion)(
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
        },
        loss_class_type="focal_loss",
        alpha=0.25,
        gamma=2.0,
    ),
    aux_loss=True,
    pixel_mean=[123.675, 116.280, 103.530],  # ImageNet RGB mean, 0-255 scale
    pixel_std=[58.395, 57.120, 57.375],
    # initializes anchor centres uniformly; the "freeze" itself is a no-op inherited from detrex
    freeze_anchor_box_centers=True,
    select_box_nums_for_evaluation=300,  # top-300 (query, class) pairs per image at inference
)

# Auxiliary losses: one copy of the weights per intermediate decoder layer (suffixes _0 .. _4).
if model.aux_loss:
    weight_dict = model.criterion.weight_dict
    aux_weight_dict = {}
    for i in range(model.transformer.decoder.num_layers - 1):
        aux_weight_dict.update({k + f"_{i}": v for k, v in weight_dict.items()})
    weight_dict.update(aux_weight_dict)
    model.criterion.weight_dict = weight_dict
