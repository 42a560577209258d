# Deformable-DETR shapes demo (CPU, random init): the baseline twin of
# projects/ks_detr/configs/ks_deformable_detr/ks_deformable_detr_shapes_demo.py, with identical settings
# (tests/projects/ks_detr/test_ks_deformable_detr.py checks that they stay identical).
# Train on shapes_demo_train, evaluate on shapes_val:
#   python tools/train_net.py --config-file projects/deformable_detr/configs/deformable_detr_shapes_demo.py
import torch.nn as nn

from detrex.config import LazyCall as L
from detrex.config import get_config
from detrex.config.recipes import with_aux_loss_weights
from detrex.layers import ShapeSpec
from detrex.modeling.backbone import BasicStem, ResNet

from .models.deformable_detr_r50 import model

C = 64  # transformer width (4 heads of 16 channels)
# ---------------------------------------------------------------- model: a narrow ResNet-18, 2 levels, tiny transformer
model.backbone.stem = L(BasicStem)(in_channels=3, out_channels=32, norm="BN")
model.backbone.stages = L(ResNet.make_default_stages)(
    depth=18, stem_out_channels=32, res2_out_channels=32, norm="BN"  # res4/res5: 128/256 channels
)
# strides 16 and 32 (the shapes are 32-64 pixels wide); a stride-8 level would double the cost of a step
model.backbone.out_features = ["res4", "res5"]
model.backbone.freeze_at = 0  # random init: everything trains
model.neck.input_shapes = {"res4": L(ShapeSpec)(channels=128), "res5": L(ShapeSpec)(channels=256)}
model.neck.in_features = ["res4", "res5"]
model.neck.out_channels = C
model.neck.num_outs = 2  # no extra stride-64 level on ~128-pixel images
model.neck.norm_layer = L(nn.GroupNorm)(num_groups=32, num_channels=C)
model.position_embedding.num_pos_feats = C // 2
model.transformer.num_feature_levels = 2
for _part in (model.transformer.encoder, model.transformer.decoder):
    _part.embed_dim = C
    _part.num_heads = 4
    _part.feedforward_dim = 4 * C
    _part.attn_dropout = 0.0  # a short schedule from scratch: no dropout
    _part.ffn_dropout = 0.0
    _part.num_feature_levels = 2
model.transformer.encoder.num_layers = 2
model.transformer.decoder.num_layers = 3
model.embed_dim = C
model.num_queries = 10  # at most 3 objects per image
model.num_classes = 3
model.criterion.num_classes = 3
model.select_box_nums_for_evaluation = 30
# aux losses for decoder layers 0 .. L-2 (and the unused two-stage _enc keys)
model.criterion.weight_dict = with_aux_loss_weights(
    model.criterion.weight_dict, num_aux=model.transformer.decoder.num_layers - 1, enc=True
)

# ---------------------------------------------------------------- data, optimizer, schedule
# the shapes-demo recipe (configs/common/shapes_demo_recipe.py), as DAB-DETR's shapes demo, with AdamW 1e-3
_recipe = get_config("common/shapes_demo_recipe.py")
dataloader, optimizer = _recipe.dataloader, _recipe.optimizer
lr_multiplier, train = _recipe.lr_multiplier, _recipe.train
optimizer.lr = 1e-3
train.output_dir = "./output/deformable_detr_shapes_demo"
train.max_iter = 1200  # KS-Deformable-DETR: 0.78 s/iteration measured on 2 CPU cores shared with other jobs
train.eval_period = 1200
train.checkpointer.period = 1200
