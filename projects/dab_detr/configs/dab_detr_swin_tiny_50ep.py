# DAB-DETR Swin-T, 50 epochs on COCO: the KS-DETR authors' baseline twin of KS-DAB-DETR-Swin-T
# (`ks_dab_detr_swin_tiny_50ep.py`). Same recipe as R50 (backbone lr x0.1).
from .dab_detr_r50_50ep import dataloader, lr_multiplier, optimizer, train
from .models.dab_detr_swin_tiny import model

# Swin-T ImageNet-22k pre-trained, fine-tuned on ImageNet-1k (the KS-DETR authors' choice; detrex's
# `dab_detr_swin_t_in1k_50ep.py` uses the IN-1k `swin_tiny_patch4_window7_224.pth`, reported 45.2 AP).
# Official Swin classification keys are renamed by detrex.checkpoint.swin_conversion on load.
train.init_checkpoint = "output/weights/swin_tiny_patch4_window7_224_22kto1k_finetune.pth"
train.output_dir = "./output/dab_detr_swin_tiny_50ep"
dataloader.evaluator.output_dir = train.output_dir
