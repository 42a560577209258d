# Baseline twin of ks_dab_detr_swin_tiny_50ep_smlp_qkv_triple_attn.py: plain DAB-DETR Swin-T, initialized
# from the 22k->1k fine-tuned Swin-T as the KS-DETR authors (detrex's IN-1k DAB-DETR Swin-T: 45.2 box AP).
from ....dab_detr.configs.dab_detr_swin_tiny_50ep import dataloader, lr_multiplier, model, optimizer, train

train.output_dir = "./output/ks_dab_detr_swin_tiny_50ep"
dataloader.evaluator.output_dir = train.output_dir
