# Baseline twin of ks_conditional_detr_r101_50ep_smlp_qkv_triple_attn.py: plain Conditional-DETR R101
# (detrex reports 43.0 box AP).
from ....conditional_detr.configs.conditional_detr_r101_50ep import dataloader, lr_multiplier, model, optimizer, train

train.output_dir = "./output/ks_conditional_detr_r101_50ep"
dataloader.evaluator.output_dir = train.output_dir
