# Deformable-DETR R50, 12 epochs (the KS-DETR paper's short schedule: 35.3 box AP reported there).
from detrex.config import get_config

from .deformable_detr_r50_50ep import dataloader, model, optimizer, train

lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_12ep  # x0.1 at epoch 11
train.max_iter = 90000  # 12 epochs x 7500 iterations at batch 16
train.output_dir = "./output/deformable_detr_r50_12ep"
dataloader.evaluator.output_dir = train.output_dir
