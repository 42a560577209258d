# KS-DAB-DETR shapes demo model and schedule on the "hard" shapes variant (small objects, clutter, occlusion):
# the KS arm of the study in projects/ks_detr/STUDY.md. Its twin dab_detr_shapes_hard.py differs only in the model.
from projects.ks_detr.study.shapes_variants import register_shapes_variant

from ...configs.ks_dab_detr.ks_dab_detr_shapes_demo import dataloader, lr_multiplier, model, optimizer, train

dataloader.train.dataset.names, dataloader.test.dataset.names = register_shapes_variant("hard")
model.num_queries = 20  # up to 6 objects per image (the demo has 10 queries for at most 3)
train.output_dir = "./output/ks_study/ks_dab_detr_shapes_hard"
