# DAB-DETR Swin-S, 50 epochs on COCO: the KS-DETR authors' baseline twin of KS-DAB-DETR-Swin-S
# (`ks_dab_detr_swin_small_50ep.py`): Swin-T's model with 18 blocks in stage 2 and drop-path 0.2.
from .dab_detr_r50_50ep import dataloader, lr_multiplier, optimizer, train
from .models.dab_detr_swin_tiny import model

model.backbone.depths = (2, 2, 18, 2)
model.backbone.drop_path_rate = 0.2

# Swin-S ImageNet-22k pre-trained, fine-tuned on ImageNet-1k (as the KS-DETR authors).
train.init_checkpoint = "output/weights/swin_small_patch4_window7_224_22kto1k_finetune.pth"
train.output_dir = "./output/dab_detr_swin_small_50ep"
dataloader.evaluator.output_dir = train.output_dir
