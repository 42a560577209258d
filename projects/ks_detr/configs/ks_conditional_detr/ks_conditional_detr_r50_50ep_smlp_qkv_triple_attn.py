# KS-Conditional-DETR R50, 50 epochs. The KS-DETR README lists 45.3 box AP, but that value (and the linked
# model) looks copy-pasted from the KS-DAB-DETR rows; not reproduced here.
# Recipe = Conditional-DETR's (projects/conditional_detr/configs/conditional_detr_r50_50ep.py):
# AdamW 1e-4, backbone lr x0.1, grad clip 0.1, 375k iterations at batch 16, lr x0.1 at 80%.
from ....conditional_detr.configs.conditional_detr_r50_50ep import dataloader, lr_multiplier, optimizer, train

from .models.ks_conditional_detr_r50_smlp_qkv_triple_attn import model

train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.output_dir = "./output/ks_conditional_detr_r50_50ep_smlp_qkv_triple_attn"
dataloader.evaluator.output_dir = train.output_dir
