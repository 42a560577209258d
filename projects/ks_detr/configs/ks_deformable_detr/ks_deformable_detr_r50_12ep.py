# Baseline twin of ks_deformable_detr_r50_12ep_smlp_qkv_triple_attn.py: plain Deformable-DETR R50, 12 epochs
# (35.3 box AP in the KS-DETR paper's table).
# Same as ks_deformable_detr_r50_50ep.py except the schedule:
# 90000 iterations at batch 16, x0.1 at epoch 11 (82500).
from detrex.config import get_config

from .ks_deformable_detr_r50_50ep import dataloader, model, optimizer, train

lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_12ep
train.max_iter = 90000
train.output_dir = "./output/ks_deformable_detr_r50_12ep"
dataloader.evaluator.output_dir = train.output_dir
