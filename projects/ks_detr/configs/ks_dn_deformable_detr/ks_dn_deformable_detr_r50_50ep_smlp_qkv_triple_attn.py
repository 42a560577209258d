# KS-DN-Deformable-DETR R50, 50 epochs (no result reported by the authors for this schedule).
# Recipe = DN-Deformable-DETR's (projects/dn_deformable_detr/configs/dn_deformable_detr_r50_50ep.py).
from ....dn_deformable_detr.configs.dn_deformable_detr_r50_50ep import dataloader, lr_multiplier, optimizer, train

from .models.ks_dn_deformable_detr_r50_smlp_qkv_triple_attn import model

train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.output_dir = "./output/ks_dn_deformable_detr_r50_50ep_smlp_qkv_triple_attn"
dataloader.evaluator.output_dir = train.output_dir
