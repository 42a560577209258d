# Baseline twin of ks_dab_detr_swin_small_50ep_smlp_qkv_triple_attn.py: plain DAB-DETR Swin-S, initialized
# from the 22k->1k fine-tuned Swin-S as the KS-DETR authors (no reported result).
from ....dab_detr.configs.dab_detr_swin_small_50ep import dataloader, lr_multiplier, model, optimizer, train

train.output_dir = "./output/ks_dab_detr_swin_small_50ep"
dataloader.evaluator.output_dir = train.output_dir
