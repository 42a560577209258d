# The baseline twin of tiny_ks_dab_detr_shapes.py: the same tiny DAB-DETR without the KS teachers.
from projects.dab_detr.modeling import DABDETR, DabDetrTransformer, DabDetrTransformerEncoder

from .tiny_ks_dab_detr_shapes import dataloader, model, train

model._target_ = DABDETR
model.transformer._target_ = DabDetrTransformer
model.transformer.encoder._target_ = DabDetrTransformerEncoder
del model.transformer.encoder.ks_mode
del model.ksgt
