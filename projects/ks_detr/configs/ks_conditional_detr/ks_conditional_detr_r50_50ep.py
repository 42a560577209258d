# Baseline twin of ks_conditional_detr_r50_50ep_smlp_qkv_triple_attn.py: plain Conditional-DETR R50
# (state dict identical to upstream detrex; detrex reports 41.6 box AP).
from ....conditional_detr.configs.conditional_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

train.output_dir = "./output/ks_conditional_detr_r50_50ep"
dataloader.evaluator.output_dir = train.output_dir
