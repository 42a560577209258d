# Baseline twin of ks_deformable_detr_r101_24ep_smlp_qkv_triple_attn.py: plain Deformable-DETR R101, 24 epochs
# (41.6 box AP in the KS-DETR paper's table).
# Same as ks_deformable_detr_r101_50ep.py except the schedule:
# 180000 iterations at batch 16, x0.1 at epoch 20 (150000).
from detrex.config import get_config

from .ks_deformable_detr_r101_50ep import dataloader, model, optimizer, train

lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_24ep
train.max_iter = 180000
train.output_dir = "./output/ks_deformable_detr_r101_24ep"
dataloader.evaluator.output_dir = train.output_dir
