# DN-Deformable-DETR with a ResNet-50 backbone (detrex `projects/dn_deformable_detr/configs/models/
# dn_deformable_detr_r50.py`): Deformable-DETR's R50 model (projects/deformable_detr/configs/models/
# deformable_detr_r50.py) with FFN 2048, no dropout, box refinement (built in), 5 denoising groups, DNCriterion.
from detrex.config.recipes import with_aux_loss_weights
from projects.dn_deformable_detr.modeling import (
    DNCriterion,
    DNDeformableDETR,
    DNDeformableDetrTransformer,
    DNDeformableDetrTransformerDecoder,
    DNDeformableDetrTransformerEncoder,
)

from ....deformable_detr.configs.models.deformable_detr_r50 import model

model._target_ = DNDeformableDETR
del model.with_box_refine  # DN-Deformable-DETR always refines boxes layer by layer
model.denoising_groups = 5
model.label_noise_prob = 0.2
model.box_noise_scale = 0.4
model.with_indicator = True  # label_encoder [81, 255] + 1 indicator channel

model.transformer._target_ = DNDeformableDetrTransformer
model.transformer.encoder._target_ = DNDeformableDetrTransformerEncoder
model.transformer.decoder._target_ = DNDeformableDetrTransformerDecoder
for _part in (model.transformer.encoder, model.transformer.decoder):
    _part.feedforward_dim = 2048  # Deformable-DETR: 1024
    _part.attn_dropout = 0.0  # Deformable-DETR: 0.1
    _part.ffn_dropout = 0.0

model.criterion._target_ = DNCriterion
del model.criterion.losses  # DNCriterion always computes the class and box losses
# matching and denoising losses (upstream's integer class weights kept), then one copy per intermediate decoder
# layer (_0 .. _4); no two-stage _enc copies
_weights = {
    "loss_class": 1,
    "loss_bbox": 5.0,
    "loss_giou": 2.0,
    "loss_class_dn": 1,
    "loss_bbox_dn": 5.0,
    "loss_giou_dn": 2.0,
}
model.criterion.weight_dict = with_aux_loss_weights(_weights, num_aux=model.transformer.decoder.num_layers - 1)
