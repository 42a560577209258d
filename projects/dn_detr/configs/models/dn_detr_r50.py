# DN-DETR with a ResNet-50 backbone (detrex `projects/dn_detr/configs/models/dn_detr_r50.py`): DAB-DETR's
# encoder/decoder, 5 denoising groups, DNCriterion.
import torch.nn as nn

from detrex.config import LazyCall as L
from detrex.layers import PositionEmbeddingSine
from detrex.modeling.backbone import BasicStem, ResNet
from detrex.modeling.criterion.dn_criterion import DNCriterion
from detrex.modeling.matcher import HungarianMatcher
from projects.dab_detr.modeling import DabDetrTransformerDecoder, DabDetrTransformerEncoder
from projects.dn_detr.modeling import DNDETR, DNDetrTransformer

model = L(DNDETR)(
    backbone=L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
        # torchvision-converted weights put the stride in the 3x3 conv
        stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=False, norm="FrozenBN"),
        out_features=["res2", "res3", "res4", "res5"],
        freeze_at=1,  # stem frozen; res2 trains (detectron2/detrex convention)
    ),
    in_features=["res5"],  # single-scale: stride-32 features only
    in_channels=2048,
    # DAB-DETR's temperature 20; 128 channels per axis -> 256
    position_embedding=L(PositionEmbeddingSine)(num_pos_feats=128, temperature=20, normalize=True),
    transformer=L(DNDetrTransformer)(
        encoder=L(DabDetrTransformerEncoder)(
            embed_dim=256,
            num_heads=8,
            attn_dropout=0.0,
            feedforward_dim=2048,
            ffn_dropout=0.0,
            activation=L(nn.PReLU)(),  # one learned slope per layer (copied into each layer)
            num_layers=6,
            post_norm=False,
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
            post_norm=True,
            return_intermediate=True,
        ),
    ),
    embed_dim=256,
    num_classes=80,
    num_queries=300,
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
        },
        loss_class_type="focal_loss",
        alpha=0.25,
        gamma=2.0,
    ),
    aux_loss=True,
    pixel_mean=[123.675, 116.280, 103.530],  # ImageNet RGB mean, 0-255 scale
    pixel_std=[58.395, 57.120, 57.375],
    freeze_anchor_box_centers=False,  # anchors keep nn.Embedding's N(0, 1) init (before sigmoid)
    select_box_nums_for_evaluation=300,  # top-300 (query, class) pairs per image at inference
    denoising_groups=5,
    label_noise_prob=0.2,
    box_noise_scale=0.4,
    with_indicator=True,  # label_encoder [81, 255] + 1 indicator channel
)

# Denoising losses, then one copy of all weights per intermediate decoder layer (suffixes _0 .. _4,
# e.g. loss_class_dn_0).
if model.aux_loss:
    weight_dict = model.criterion.weight_dict
    weight_dict["loss_class_dn"] = 1.0
    weight_dict["loss_bbox_dn"] = 5.0
    weight_dict["loss_giou_dn"] = 2.0
    aux_weight_dict = {}
    for i in range(model.transformer.decoder.num_layers - 1):
        aux_weight_dict.update({k + f"_{i}": v for k, v in weight_dict.items()})
    weight_dict.update(aux_weight_dict)
    model.criterion.weight_dict = weight_dict
