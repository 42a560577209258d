# Deformable-DETR R101, 12 epochs (36.8 box AP in the KS-DETR paper's table).
from .deformable_detr_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.stages.depth = 101  # res4 has 23 blocks
train.init_checkpoint = "output/weights/R-101.pkl"
train.output_dir = "./output/deformable_detr_r101_12ep"
dataloader.evaluator.output_dir = train.output_dir
