# Baseline twin of ks_dn_detr_r101_50ep_smlp_qkv_triple_attn.py: plain DN-DETR R101
# (no upstream detrex result).
from ....dn_detr.configs.dn_detr_r101_50ep import dataloader, lr_multiplier, model, optimizer, train

train.output_dir = "./output/ks_dn_detr_r101_50ep"
dataloader.evaluator.output_dir = train.output_dir
