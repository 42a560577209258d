# KS-DAB-DETR Swin-S, 50 epochs (no result reported by the authors): KS-DAB-DETR Swin-T with 18 blocks in
# stage 2 and drop-path 0.2.
from .ks_dab_detr_swin_tiny_50ep_smlp_qkv_triple_attn import dataloader, lr_multiplier, model, optimizer, train

model.backbone.depths = (2, 2, 18, 2)
model.backbone.drop_path_rate = 0.2

# Swin-S ImageNet-22k pre-trained, fine-tuned on ImageNet-1k (as the authors).
train.init_checkpoint = "output/weights/swin_small_patch4_window7_224_22kto1k_finetune.pth"
train.output_dir = "./output/ks_dab_detr_swin_small_50ep_smlp_qkv_triple_attn"
dataloader.evaluator.output_dir = train.output_dir
