# KS-Deformable-DETR R50, 50 epochs (the authors report 44.8 box AP; not reproduced here).
# Recipe = Deformable-DETR's (projects/deformable_detr/configs/deformable_detr_r50_50ep.py).
from ....deformable_detr.configs.deformable_detr_r50_50ep import dataloader, lr_multiplier, optimizer, train

from .models.ks_deformable_detr_r50_smlp_qkv_triple_attn import model

train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.output_dir = "./output/ks_deformable_detr_r50_50ep_smlp_qkv_triple_attn"
dataloader.evaluator.output_dir = train.output_dir
