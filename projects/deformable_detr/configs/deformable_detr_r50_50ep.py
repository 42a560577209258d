# Deformable-DETR R50, 50 epochs on COCO (detrex recipe; upstream reports 44.9 box AP detrex-trained,
# the paper 44.1 / 44.5).
from detrex.config import get_config

from .models.deformable_detr_r50 import model

# the shared DETR-family recipe as is (configs/common/detr_50ep.py): 375k iterations at batch 16, x0.1 at 80%,
# AdamW 1e-4 with the backbone x0.1, gradient clipping at 0.1, ImageNet R-50 initialization
_recipe = get_config("common/detr_50ep.py")
dataloader, optimizer = _recipe.dataloader, _recipe.optimizer
lr_multiplier, train = _recipe.lr_multiplier, _recipe.train
train.output_dir = "./output/deformable_detr_r50_50ep"
dataloader.evaluator.output_dir = train.output_dir
