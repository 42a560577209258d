# DAB-DETR with a ResNet-50 backbone (detrex `projects/dab_detr/configs/models/dab_detr_r50.py`).
import torch.nn as nn

from detrex.config import LazyCall as L
from detrex.config import get_config
from detrex.config.recipes import with_aux_loss_weights
from detrex.layers import PositionEmbeddingSine
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
    criterion=get_config("common/criterion/focal_set_criterion.py").criterion,  # focal; weights class 1, L1 5, GIoU 2
    aux_loss=True,
    pixel_mean=[123.675, 116.280, 103.530],  # ImageNet RGB mean, 0-255 scale
    pixel_std=[58.395, 57.120, 57.375],
    # initializes anchor centres uniformly; the "freeze" itself is a no-op inherited from detrex
    freeze_anchor_box_centers=True,
    select_box_nums_for_evaluation=300,  # top-300 (query, class) pairs per image at inference
)

# Auxiliary losses: one copy of the weights per intermediate decoder layer (suffixes _0 .. _4).
model.criterion.weight_dict = with_aux_loss_weights(
    model.criterion.weight_dict, num_aux=model.transformer.decoder.num_layers - 1
)
