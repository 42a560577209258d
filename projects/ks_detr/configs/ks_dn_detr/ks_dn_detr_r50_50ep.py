# Baseline twin of ks_dn_detr_r50_50ep_smlp_qkv_triple_attn.py: plain DN-DETR R50
# (state dict identical to upstream detrex; detrex reports 44.7 box AP).
from ....dn_detr.configs.dn_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

train.output_dir = "./output/ks_dn_detr_r50_50ep"
dataloader.evaluator.output_dir = train.output_dir
