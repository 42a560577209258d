# KS-Deformable-DETR R101, 50 epochs (the authors report 46.0 box AP; not reproduced here).
from .ks_deformable_detr_r50_50ep_smlp_qkv_triple_attn import dataloader, lr_multiplier, model, optimizer, train

model.backbone.stages.depth = 101  # res4 has 23 blocks
# torchvision resnet101 converted to detectron2 names (tools/convert_torchvision_to_d2.py)
train.init_checkpoint = "output/weights/R-101.pkl"
train.output_dir = "./output/ks_deformable_detr_r101_50ep_smlp_qkv_triple_attn"
dataloader.evaluator.output_dir = train.output_dir
