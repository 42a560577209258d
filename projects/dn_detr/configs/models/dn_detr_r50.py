# DN-DETR with a ResNet-50 backbone (detrex `projects/dn_detr/configs/models/dn_detr_r50.py`): DAB-DETR's R50 model
# (projects/dab_detr/configs/models/dab_detr_r50.py) plus 5 denoising groups and DNCriterion.
from detrex.config.recipes import with_aux_loss_weights
from detrex.modeling.criterion.dn_criterion import DNCriterion
from projects.dn_detr.modeling import DNDETR, DNDetrTransformer

from ....dab_detr.configs.models.dab_detr_r50 import model

model._target_ = DNDETR
model.transformer._target_ = DNDetrTransformer  # builds the denoising queries, then DAB-DETR's encoder/decoder
model.transformer.encoder.post_norm = False
model.transformer.decoder.post_norm = True
model.transformer.decoder.return_intermediate = True
model.criterion._target_ = DNCriterion  # adds the denoising losses (*_dn)
model.freeze_anchor_box_centers = False  # anchors keep nn.Embedding's N(0, 1) init (before sigmoid)
model.denoising_groups = 5
model.label_noise_prob = 0.2
model.box_noise_scale = 0.4
model.with_indicator = True  # label_encoder [81, 255] + 1 indicator channel

# Matching losses at DAB-DETR's weights plus denoising losses at the same weights, then one copy of all weights
# per intermediate decoder layer (suffixes _0 .. _4, e.g. loss_class_dn_0; DAB-DETR's copies are replaced).
model.criterion.weight_dict = with_aux_loss_weights(
    {**model.criterion.weight_dict, "loss_class_dn": 1.0, "loss_bbox_dn": 5.0, "loss_giou_dn": 2.0},
    num_aux=model.transformer.decoder.num_layers - 1,
)
