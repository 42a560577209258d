# Baseline twin of ks_deformable_detr_r50_50ep_smlp_qkv_triple_attn.py: plain Deformable-DETR R50
# (state dict identical to upstream detrex; paper 44.1 box AP, detrex 44.9).
from ....deformable_detr.configs.deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

train.output_dir = "./output/ks_deformable_detr_r50_50ep"
dataloader.evaluator.output_dir = train.output_dir
