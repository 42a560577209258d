# Baseline twin of ks_dn_deformable_detr_r50_50ep_smlp_qkv_triple_attn.py: plain DN-Deformable-DETR R50
# (state dict identical to upstream detrex; detrex reports 49.5 box AP, converted from the authors' weights).
from ....dn_deformable_detr.configs.dn_deformable_detr_r50_50ep import (
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

train.output_dir = "./output/ks_dn_deformable_detr_r50_50ep"
dataloader.evaluator.output_dir = train.output_dir
