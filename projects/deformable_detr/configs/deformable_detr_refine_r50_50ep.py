# Deformable-DETR R50 with iterative bounding-box refinement, 50 epochs (detrex's
# `deformable_detr_r50_with_box_refinement_50ep.py`).
from .deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model.with_box_refine = True  # one class/box head per decoder layer, boxes refined layer by layer
train.output_dir = "./output/deformable_detr_refine_r50_50ep"
dataloader.evaluator.output_dir = train.output_dir
