# Two-stage Deformable-DETR R50 (with box refinement, as upstream), 50 epochs (detrex's
# `deformable_detr_r50_two_stage_50ep.py`).
from .deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model.with_box_refine = True
model.as_two_stage = True  # the top-300 encoder proposals become the decoder's queries
model.transformer.as_two_stage = True
train.output_dir = "./output/deformable_detr_two_stage_r50_50ep"
dataloader.evaluator.output_dir = train.output_dir
