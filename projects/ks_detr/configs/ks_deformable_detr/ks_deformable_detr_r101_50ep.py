# Baseline twin of ks_deformable_detr_r101_50ep_smlp_qkv_triple_attn.py: plain Deformable-DETR R101
# (45.1 box AP in the KS-DETR paper's table).
from .ks_deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.stages.depth = 101
train.init_checkpoint = "output/weights/R-101.pkl"
train.output_dir = "./output/ks_deformable_detr_r101_50ep"
dataloader.evaluator.output_dir = train.output_dir
