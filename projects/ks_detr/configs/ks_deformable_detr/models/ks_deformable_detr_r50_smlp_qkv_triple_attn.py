# KS-Deformable-DETR R50 (deformable triple attention in the last encoder layer, shared offsets/out-proj/
# norms/FFN): the Deformable-DETR R50 model of projects/deformable_detr plus the KS parts, so changes to the
# baseline reach this variant.
# The authors' equivalent: KS-DETR projects/ks_detr/configs/ks_deformable_detr/models/
# ks_deformable_detr_r50_smlp_qkv_triple_attn.py
from detrex.config import LazyCall as L
from detrex.config.recipes import with_aux_loss_weights
from projects.ks_detr.modeling.ks_deformable_detr import KSDeformableDETR
from projects.ks_detr.modeling.ks_deformable_transformer import (
    KSDeformableDetrTransformer,
    KSDeformableDetrTransformerEncoder,
)
from projects.ks_detr.modeling.smlp import KSGT

from .....deformable_detr.configs.models.deformable_detr_r50 import model

model._target_ = KSDeformableDETR
model.transformer._target_ = KSDeformableDetrTransformer
# last encoder layer = deformable triple attention ("regular_5-DeformableTripleAttnShareAV_1")
model.transformer.encoder._target_ = KSDeformableDetrTransformerEncoder
model.transformer.encoder.ks_mode = "triple"
# GT token mask over the 4 levels: "authors" = bilinear align_corners point sampling (released models);
# "cell_overlap" keeps boxes smaller than a stride (behaviour change)
model.ksgt = L(KSGT)(embed_dim=256, mask_rule="authors", pad_fg_pixel=0)

# 8 prediction sets in training: pred = teacher 2 (share A) final, aux _0.._5 = student decoder layers,
# _6 = teacher 1 (share V) final; every set gets the base weights (_enc: two-stage proposals, unused here)
model.criterion.weight_dict = with_aux_loss_weights(
    model.criterion.weight_dict, num_aux=model.transformer.decoder.num_layers + 1, enc=True
)
