# DAB-DETR on the built-in shapes dataset, from random init, on a 2-core CPU in 10-20 minutes (by load).
#
# The baseline twin of the README's main job, projects/ks_detr/configs/ks_dab_detr/ks_dab_detr_shapes_demo.py:
# that config takes everything below and adds the KS parts, so the two differ only in knowledge sharing
# (tests/projects/ks_detr/test_shapes_demo_config.py checks it).
#
#   python tools/train_net.py --config-file projects/dab_detr/configs/dab_detr_shapes_demo.py
#
# Why these settings (DETR-family models converge slowly from scratch; measured on a 2-core CPU):
# * trainable BatchNorm in a narrow ResNet-18 (32-64-128 channels): with random init, FrozenBN would leave
#   the backbone unnormalized;
# * stride-16 features (res4; res5 is dropped): 8x8 tokens on a 128-px image instead of 4x4;
# * a 128-wide transformer, 2 encoder + 3 decoder layers, 10 queries (at most 3 objects per image);
# * AdamW 5e-4 for all parameters (1e-3 learned markedly slower), warm-up, and x0.1 for the last 15%: the drop
#   adds about 20 AP;
# * 2000 training images of the default distribution (configs/common/data/shapes_demo.py), no crop branch.
from detrex.config import LazyCall as L
from detrex.config import get_config
from detrex.config.recipes import with_aux_loss_weights
from detrex.modeling.backbone import BasicStem, ResNet

from .models.dab_detr_r50 import model

# ------------------------------------------------------------------------------------------------- model
model.backbone.stem = L(BasicStem)(in_channels=3, out_channels=32, norm="BN")
model.backbone.stages = L(ResNet.make_default_stages)(
    depth=18, stem_out_channels=32, res2_out_channels=32, norm="BN"  # res2..res4: 32, 64, 128 channels
)
model.backbone.out_features = ["res4"]  # stride 16; the res5 stage is not built
model.backbone.freeze_at = 0  # random init: everything trains
model.in_features = ["res4"]
model.in_channels = 128

model.embed_dim = 128
model.position_embedding.num_pos_feats = 64  # 2 x 64 = embed_dim
model.transformer.encoder.embed_dim = 128
model.transformer.encoder.num_heads = 8
model.transformer.encoder.feedforward_dim = 512
model.transformer.encoder.num_layers = 2
model.transformer.decoder.embed_dim = 128
model.transformer.decoder.num_heads = 8
model.transformer.decoder.feedforward_dim = 512
model.transformer.decoder.num_layers = 3

model.num_queries = 10
model.num_classes = 3  # circle, square, triangle
model.criterion.num_classes = 3
model.select_box_nums_for_evaluation = 30  # all 10 queries x 3 classes

# auxiliary losses for decoder layers 0 .. L-2 (the last layer is the main output)
model.criterion.weight_dict = with_aux_loss_weights(
    {"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}, num_aux=model.transformer.decoder.num_layers - 1
)

# ---------------------------------------------------------------------- data, optimization, schedule
# the shapes-demo recipe (configs/common/shapes_demo_recipe.py): shapes_demo data at batch 8, AdamW (weight
# decay 1e-4, no backbone LR factor), warm-up, x0.1 for the last 15%, seed 42, gradient clipping at 0.1
_recipe = get_config("common/shapes_demo_recipe.py")
dataloader, optimizer = _recipe.dataloader, _recipe.optimizer
lr_multiplier, train = _recipe.lr_multiplier, _recipe.train
optimizer.lr = 5e-4
train.output_dir = "./output/dab_detr_shapes_demo"
train.max_iter = 2000  # 8 epochs of 2000 images; KS-DAB-DETR: 0.24 s/iter (2 idle cores) .. 0.43 (1 busy core)
train.eval_period = 1000  # evaluate midway and at the end (a few seconds each)
train.checkpointer.period = 1000
