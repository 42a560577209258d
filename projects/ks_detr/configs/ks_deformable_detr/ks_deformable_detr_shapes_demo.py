# KS-Deformable-DETR shapes demo (CPU, random init): Deformable-DETR's shapes demo
# (projects/deformable_detr/configs/deformable_detr_shapes_demo.py, same model size, data, optimizer and schedule)
# with the KS parts: the last of its 2 encoder layers is the deformable triple attention, the sMLP sees the GT
# token mask over the 2 levels, and the 3 decoder layers run once more per teacher in training.
#   python tools/train_net.py \
#       --config-file projects/ks_detr/configs/ks_deformable_detr/ks_deformable_detr_shapes_demo.py
from detrex.config import LazyCall as L
from detrex.config.recipes import with_aux_loss_weights
from projects.ks_detr.modeling.ks_deformable_detr import KSDeformableDETR
from projects.ks_detr.modeling.ks_deformable_transformer import (
    KSDeformableDetrTransformer,
    KSDeformableDetrTransformerEncoder,
)
from projects.ks_detr.modeling.smlp import KSGT

from ....deformable_detr.configs.deformable_detr_shapes_demo import dataloader, lr_multiplier, model, optimizer, train

model._target_ = KSDeformableDETR
model.transformer._target_ = KSDeformableDetrTransformer
model.transformer.encoder._target_ = KSDeformableDetrTransformerEncoder
model.transformer.encoder.ks_mode = "triple"
model.ksgt = L(KSGT)(embed_dim="${..embed_dim}", mask_rule="authors", pad_fg_pixel=0)
# training sets: _0, _1, _2 = student decoder layers 1-3, _3 = teacher 1 final, unsuffixed = teacher 2 final
model.criterion.weight_dict = with_aux_loss_weights(
    model.criterion.weight_dict, num_aux=model.transformer.decoder.num_layers + 1, enc=True
)
train.output_dir = "./output/ks_deformable_detr_shapes_demo"
