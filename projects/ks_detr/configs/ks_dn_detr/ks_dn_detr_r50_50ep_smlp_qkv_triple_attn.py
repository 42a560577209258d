# KS-DN-DETR R50, 50 epochs (the authors report 45.2 box AP; not reproduced here).
# Recipe = DN-DETR's (projects/dn_detr/configs/dn_detr_r50_50ep.py):
# AdamW 1e-4, backbone lr x0.1, grad clip 0.1, 375k iterations at batch 16, lr x0.1 at 80%.
from ....dn_detr.configs.dn_detr_r50_50ep import dataloader, lr_multiplier, optimizer, train

from .models.ks_dn_detr_r50_smlp_qkv_triple_attn import model

train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.output_dir = "./output/ks_dn_detr_r50_50ep_smlp_qkv_triple_attn"
dataloader.evaluator.output_dir = train.output_dir
