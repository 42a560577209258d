# KS-Deformable-DETR R50, 24 epochs (no result reported by the authors).
# Same as ks_deformable_detr_r50_50ep_smlp_qkv_triple_attn.py except the schedule:
# 180000 iterations at batch 16, x0.1 at epoch 20 (150000).
from detrex.config import get_config

from .ks_deformable_detr_r50_50ep_smlp_qkv_triple_attn import dataloader, model, optimizer, train

lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_24ep
train.max_iter = 180000
train.output_dir = "./output/ks_deformable_detr_r50_24ep_smlp_qkv_triple_attn"
dataloader.evaluator.output_dir = train.output_dir
