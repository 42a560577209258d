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
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detrex.config import LazyCall as L
from detrex.config import get_config
from detrex.modeling.backbone import BasicStem, ResNet
from detrex.solver import WarmupParamScheduler

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
_base = {"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
model.criterion.weight_dict = {
    **_base,
    **{f"{k}_{i}": v for i in range(model.transformer.decoder.num_layers - 1) for k, v in _base.items()},
}

# -------------------------------------------------------------------------------------------------- data
dataloader = get_config("common/data/shapes_demo.py").dataloader
dataloader.train.total_batch_size = 8
dataloader.evaluator.output_dir = "${train.output_dir}"  # follows a train.output_dir=... override

# ------------------------------------------------------------------------------------------ optimization
optimizer = get_config("common/optim.py").AdamW
optimizer.lr = 5e-4  # no backbone LR factor: the backbone learns from scratch too
optimizer.weight_decay = 1e-4

# linear warm-up over the first 3% (from 0.01x), then 1.0x, then 0.1x for the last 15%
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[17, 20]),
    warmup_length=0.03,
    warmup_method="linear",
    warmup_factor=0.01,
)

train = get_config("common/train.py").train
train.output_dir = "./output/dab_detr_shapes_demo"
train.init_checkpoint = ""  # random init: nothing to download
train.device = "cpu"
train.seed = 42
train.max_iter = 2000  # 8 epochs of 2000 images; KS-DAB-DETR: 0.24 s/iter (2 idle cores) .. 0.43 (1 busy core)
train.eval_period = 1000  # evaluate midway and at the end (a few seconds each)
train.log_period = 20  # losses, time per iteration and ETA every 20 iterations
train.checkpointer.period = 1000
train.clip_grad.enabled = True  # DETR recipe: clip the gradient's L2 norm at 0.1
train.clip_grad.params.max_norm = 0.1
train.clip_grad.params.norm_type = 2
