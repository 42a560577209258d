# Ablation arm of the study in projects/ks_detr/STUDY.md: KS-DAB-DETR on hard shapes with ONE teacher (dual
# attention, share-A: the teacher shares the student's attention weights A; its values V^t come from the sMLP tokens).
# One teacher instead of two: 3 student + 1 teacher prediction sets (the loss weights kept for a second teacher are unused).
from .ks_dab_detr_shapes_hard import dataloader, lr_multiplier, model, optimizer, train

model.transformer.encoder.ks_mode = "dual_share_a"
train.output_dir = "./output/ks_study/ks_dab_detr_shapes_hard_dual_share_a"
