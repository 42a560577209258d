"""The DETR-family COCO recipe shared by the R50 baselines (detrex's ``*_r50_50ep.py`` training block).

50 epochs (375k iterations at batch 16, LR x0.1 at 80 %), AdamW 1e-4 with the backbone 10x slower, gradient
clipping at 0.1, ImageNet R-50 initialization, fp32. A detector's top config imports it and states what differs:

    _recipe = get_config("common/detr_50ep.py")
    dataloader, optimizer = _recipe.dataloader, _recipe.optimizer
    lr_multiplier, train = _recipe.lr_multiplier, _recipe.train
    train.output_dir = "./output/<name>"
    dataloader.evaluator.output_dir = train.output_dir
"""

from detrex.config import get_config
from detrex.solver import backbone_lr_factor

dataloader = get_config("common/data/coco_detr.py").dataloader
optimizer = get_config("common/optim.py").AdamW
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_50ep  # x0.1 at 80% of training
train = get_config("common/train.py").train

# initialize the backbone from torchvision's ImageNet ResNet-50 (detectron2 names)
train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.max_iter = 375000  # 50 epochs x 7500 iterations at batch 16
train.eval_period = 5000
train.log_period = 20
train.checkpointer.period = 5000
# DETR recipe: clip the gradient's L2 norm at 0.1
train.clip_grad.enabled = True
train.clip_grad.params.max_norm = 0.1
train.clip_grad.params.norm_type = 2
train.amp.enabled = False  # fp32 as upstream

# AdamW 1e-4 / weight decay 1e-4; the backbone learns 10x slower
optimizer.lr = 1e-4
optimizer.betas = (0.9, 0.999)
optimizer.weight_decay = 1e-4
optimizer.params.lr_factor_func = backbone_lr_factor  # named function: saved configs reload

dataloader.train.num_workers = 16
dataloader.train.total_batch_size = 16  # 8 GPUs x 2 images upstream
