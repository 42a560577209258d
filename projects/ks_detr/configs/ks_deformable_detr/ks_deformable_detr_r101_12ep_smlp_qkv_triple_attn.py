# KS-Deformable-DETR R101, 12 epochs (the authors report 38.4 box AP; not reproduced here).
# Same as ks_deformable_detr_r101_50ep_smlp_qkv_triple_attn.py except the schedule:
# 90000 iterations at batch 16, x0.1 at epoch 11 (82500).
from detrex.config import get_config

from .ks_deformable_detr_r101_50ep_smlp_qkv_triple_attn import dataloader, model, optimizer, train

lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_12ep
train.max_iter = 90000
train.output_dir = "./output/ks_deformable_detr_r101_12ep_smlp_qkv_triple_attn"
dataloader.evaluator.output_dir = train.output_dir
