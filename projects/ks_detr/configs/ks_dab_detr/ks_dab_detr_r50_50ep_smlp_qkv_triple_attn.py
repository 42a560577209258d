# KS-DAB-DETR R50, 50 epochs (the authors report 43.9 box AP; not reproduced here).
# Recipe = DAB-DETR's (projects/dab_detr/configs/dab_detr_r50_50ep.py).
from ....dab_detr.configs.dab_detr_r50_50ep import dataloader, lr_multiplier, optimizer, train

from .models.ks_dab_detr_r50_smlp_qkv_triple_attn import model

train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.output_dir = "./output/ks_dab_detr_r50_50ep_smlp_qkv_triple_attn"
dataloader.evaluator.output_dir = train.output_dir
