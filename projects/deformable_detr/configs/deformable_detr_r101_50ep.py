# Deformable-DETR R101, 50 epochs on COCO.
from .deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.stages.depth = 101  # res4 has 23 blocks
# torchvision resnet101 converted to detectron2 names (tools/convert_torchvision_to_d2.py)
train.init_checkpoint = "output/weights/R-101.pkl"
train.output_dir = "./output/deformable_detr_r101_50ep"
dataloader.evaluator.output_dir = train.output_dir
