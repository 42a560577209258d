# KS-DAB-DETR Swin-T, 50 epochs (the authors report 47.1 box AP; not reproduced here). Same recipe as
# R50 (backbone lr x0.1, which also covers the Swin weights).
from ....dab_detr.configs.dab_detr_swin_tiny_50ep import dataloader, lr_multiplier, optimizer, train

from .models.ks_dab_detr_swin_tiny_smlp_qkv_triple_attn import model

# Swin-T ImageNet-22k pre-trained, fine-tuned on ImageNet-1k (the authors' choice; the README's "IN1k" and
# detrex's baseline use the plain IN-1k swin_tiny_patch4_window7_224.pth). Official Swin classification
# keys are renamed on load (detrex.checkpoint.swin_conversion).
train.init_checkpoint = "output/weights/swin_tiny_patch4_window7_224_22kto1k_finetune.pth"
train.output_dir = "./output/ks_dab_detr_swin_tiny_50ep_smlp_qkv_triple_attn"
dataloader.evaluator.output_dir = train.output_dir
