# Conditional-DETR with a ResNet-50 backbone (detrex `projects/conditional_detr/configs/models/conditional_detr_r50.py`).
import torch.nn as nn

from detrex.config import LazyCall as L
from detrex.config import get_config
from detrex.config.recipes import with_aux_loss_weights
from detrex.layers import PositionEmbeddingSine
from projects.conditional_detr.modeling import (
    ConditionalDETR,
    ConditionalDetrTransformer,
    ConditionalDetrTransformerDecoder,
    ConditionalDetrTransformerEncoder,
)

model = L(ConditionalDETR)(
    backbone=get_config("common/backbone/resnet50.py").backbone,  # FrozenBN ResNet-50, res2..res5
    in_features=["res5"],  # single-scale: stride-32 features only
    in_channels=2048,
    # DETR's temperature 10000 (DAB/DN-DETR use 20); 128 channels per axis -> 256
    position_embedding=L(PositionEmbeddingSine)(num_pos_feats=128, temperature=10000, normalize=True),
    transformer=L(ConditionalDetrTransformer)(
        encoder=L(ConditionalDetrTransformerEncoder)(
            embed_dim=256,
            num_heads=8,
            attn_dropout=0.1,
            feedforward_dim=2048,
            ffn_dropout=0.1,
            activation=L(nn.ReLU)(),
            num_layers=6,
            post_norm=False,
        ),
        decoder=L(ConditionalDetrTransformerDecoder)(
            embed_dim=256,
            num_heads=8,
            attn_dropout=0.1,
            feedforward_dim=2048,
            ffn_dropout=0.1,
            activation=L(nn.ReLU)(),
            num_layers=6,
            post_norm=True,  # shared LayerNorm on every decoder layer's output
            return_intermediate=True,
        ),
    ),
    embed_dim=256,
    num_classes=80,
    num_queries=300,
    criterion=get_config("common/criterion/focal_set_criterion.py").criterion,  # focal; weights class 1, L1 5, GIoU 2
    aux_loss=True,
    pixel_mean=[123.675, 116.280, 103.530],  # ImageNet RGB mean, 0-255 scale
    pixel_std=[58.395, 57.120, 57.375],
    select_box_nums_for_evaluation=300,  # top-300 (query, class) pairs per image at inference
)

model.criterion.weight_dict.loss_class = 2.0  # Conditional-DETR weighs classification 2x (DAB-DETR: 1)
# Auxiliary losses: one copy of the weights per intermediate decoder layer (suffixes _0 .. _4).
model.criterion.weight_dict = with_aux_loss_weights(
    model.criterion.weight_dict, num_aux=model.transformer.decoder.num_layers - 1
)
