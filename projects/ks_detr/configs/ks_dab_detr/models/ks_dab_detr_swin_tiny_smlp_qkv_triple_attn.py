# KS-DAB-DETR with a Swin-T backbone: the KS-DAB-DETR R50 model with projects/dab_detr's Swin-T backbone
# (embed 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24), drop-path 0.1; only the stride-32 stage "p3",
# 768 channels). The authors' equivalent: KS-DETR projects/ks_detr/configs/ks_dab_detr/models/
# ks_dab_detr_swin_tiny_smlp_qkv_triple_attn.py
from .....dab_detr.configs.models.dab_detr_swin_tiny import model as _swin
from .ks_dab_detr_r50_smlp_qkv_triple_attn import model

model.backbone = _swin.backbone
model.in_features = _swin.in_features
model.in_channels = _swin.in_channels
