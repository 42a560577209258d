"""The CPU training recipe shared by the DETR-family shapes demos (``projects/*/configs/*_shapes_demo.py``).

Random init on a 2-core CPU: the data of ``common/data/shapes_demo.py`` (2000 training images, batch 8); AdamW
with weight decay 1e-4 and no backbone LR factor (the backbone learns from scratch too); linear warm-up over the
first 3% of ``train.max_iter`` (from 0.01x), then 1.0x, then 0.1x for the last 15% (the drop adds about 20 AP);
seed 42, gradient clipping at 0.1 (DETR recipe), losses logged every 20 iterations. A demo imports it and states
its learning rate and length:

    _recipe = get_config("common/shapes_demo_recipe.py")
    dataloader, optimizer = _recipe.dataloader, _recipe.optimizer
    lr_multiplier, train = _recipe.lr_multiplier, _recipe.train
    optimizer.lr = 5e-4
    train.max_iter, train.eval_period, train.checkpointer.period = 2000, 1000, 1000
    train.output_dir = "./output/<name>"
"""

from fvcore.common.param_scheduler import MultiStepParamScheduler

from detrex.config import LazyCall as L
from detrex.config import get_config
from detrex.solver import WarmupParamScheduler

dataloader = get_config("common/data/shapes_demo.py").dataloader
dataloader.train.total_batch_size = 8
dataloader.evaluator.output_dir = "${train.output_dir}"  # follows a train.output_dir=... override

optimizer = get_config("common/optim.py").AdamW
optimizer.weight_decay = 1e-4

# milestones in units of max_iter / 20: x0.1 from 85%
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[17, 20]),
    warmup_length=0.03,
    warmup_method="linear",
    warmup_factor=0.01,
)

train = get_config("common/train.py").train
train.init_checkpoint = ""  # random init: nothing to download
train.device = "cpu"
train.seed = 42
train.log_period = 20  # losses, time per iteration and ETA every 20 iterations
train.clip_grad.enabled = True  # DETR recipe: clip the gradient's L2 norm at 0.1
train.clip_grad.params.max_norm = 0.1
train.clip_grad.params.norm_type = 2
