# Baseline twin of ks_dab_detr_r101_50ep_smlp_qkv_triple_attn.py: plain DAB-DETR R101
# (detrex reports 44.0 box AP).
from ....dab_detr.configs.dab_detr_r101_50ep import dataloader, lr_multiplier, model, optimizer, train

train.output_dir = "./output/ks_dab_detr_r101_50ep"
dataloader.evaluator.output_dir = train.output_dir
