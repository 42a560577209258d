# KS-DN-Deformable-DETR R50 (deformable triple attention in the last encoder layer, shared offsets/out-proj/
# norms/FFN): the DN-Deformable-DETR R50 model of projects/dn_deformable_detr plus the KS parts.
# The authors' equivalent: KS-DETR projects/ks_detr/configs/ks_dn_deformable_detr/models/
# ks_dn_deformable_detr_r50_smlp_qkv_triple_attn.py
from detrex.config import LazyCall as L
from detrex.config.recipes import with_aux_loss_weights
from projects.ks_detr.modeling.ks_deformable_transformer import (
    KSDNDeformableDetrTransformer,
    KSDNDeformableDetrTransformerEncoder,
)
from projects.ks_detr.modeling.ks_dn_deformable_detr import KSDNDeformableDETR
from projects.ks_detr.modeling.smlp import KSGT

from .....dn_deformable_detr.configs.models.dn_deformable_detr_r50 import model

model._target_ = KSDNDeformableDETR
model.transformer._target_ = KSDNDeformableDetrTransformer
# last encoder layer = deformable triple attention ("regular_5-DeformableTripleAttnShareAV_1")
model.transformer.encoder._target_ = KSDNDeformableDetrTransformerEncoder
model.transformer.encoder.ks_mode = "triple"
# GT token mask over the 4 levels ("authors" rule, as the released models)
model.ksgt = L(KSGT)(embed_dim=256, mask_rule="authors", pad_fg_pixel=0)

# 8 prediction sets in training (pred = teacher 2 final, _0.._5 student layers, _6 teacher 1 final), each with
# matching and denoising losses at the base weights
model.criterion.weight_dict = with_aux_loss_weights(
    model.criterion.weight_dict, num_aux=model.transformer.decoder.num_layers + 1
)
