# Baseline twin of ks_dab_detr_r50_50ep_smlp_qkv_triple_attn.py: plain DAB-DETR R50
# (state dict identical to upstream detrex; detrex reports 43.3 box AP).
from ....dab_detr.configs.dab_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

train.output_dir = "./output/ks_dab_detr_r50_50ep"
dataloader.evaluator.output_dir = train.output_dir
