# KS-Conditional-DETR R50 (triple attention, shared out-proj/norms/FFN): the Conditional-DETR R50 model of
# projects/conditional_detr plus the KS parts, so changes to the baseline reach this variant.
# The authors' equivalent: KS-DETR projects/ks_detr/configs/ks_conditional_detr/models/
# ks_conditional_detr_r50_smlp_qkv_triple_attn.py
from detrex.config import LazyCall as L
from detrex.config.recipes import with_aux_loss_weights
from projects.ks_detr.modeling import (
    KSGT,
    KSConditionalDETR,
    KSConditionalDetrTransformer,
    KSConditionalDetrTransformerEncoder,
)

from .....conditional_detr.configs.models.conditional_detr_r50 import model

model._target_ = KSConditionalDETR
model.transformer._target_ = KSConditionalDetrTransformer
model.transformer.encoder._target_ = KSConditionalDetrTransformerEncoder
# last encoder layer = triple attention ("regular_5-TripleAttnQKVShareAV_1"); the teachers use the plain
# sine positional embedding (Conditional-DETR's encoder has no query_scale)
model.transformer.encoder.ks_mode = "triple"
# GT token mask: "authors" = bilinear align_corners point sampling (released models);
# "cell_overlap" keeps boxes smaller than a stride (behaviour change)
model.ksgt = L(KSGT)(embed_dim=256, mask_rule="authors", pad_fg_pixel=0)

# 8 prediction sets in training: pred = teacher 2 (share A) final, aux _0.._5 = student decoder layers,
# _6 = teacher 1 (share V) final; every set gets the base weights (class 2.0, bbox 5.0, giou 2.0)
model.criterion.weight_dict = with_aux_loss_weights(
    model.criterion.weight_dict, num_aux=model.transformer.decoder.num_layers + 1
)
