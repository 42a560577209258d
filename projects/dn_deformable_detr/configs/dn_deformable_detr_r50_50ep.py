# DN-Deformable-DETR R50, 50 epochs on COCO (detrex reports 49.5 box AP, converted from the authors' weights).
from detrex.config import get_config
from detrex.solver import backbone_lr_factor

from .models.dn_deformable_detr_r50 import model

dataloader = get_config("common/data/coco_detr.py").dataloader
optimizer = get_config("common/optim.py").AdamW
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_50ep  # x0.1 at 80% of training
train = get_config("common/train.py").train

train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.output_dir = "./output/dn_deformable_detr_r50_50ep"
train.max_iter = 375000  # 50 epochs x 7500 iterations at batch 16
train.eval_period = 5000
train.log_period = 20
train.checkpointer.period = 5000
train.clip_grad.enabled = True  # L2 norm at 0.1
train.clip_grad.params.max_norm = 0.1
train.clip_grad.params.norm_type = 2
train.amp.enabled = False

optimizer.lr = 1e-4
optimizer.betas = (0.9, 0.999)
optimizer.weight_decay = 1e-4
optimizer.params.lr_factor_func = backbone_lr_factor  # backbone x0.1

dataloader.train.num_workers = 16
dataloader.train.total_batch_size = 16
dataloader.evaluator.output_dir = train.output_dir
