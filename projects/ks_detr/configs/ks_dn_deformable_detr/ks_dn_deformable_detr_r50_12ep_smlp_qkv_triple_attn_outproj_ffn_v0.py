# Name linked in the KS-DETR README (the file does not exist in the authors' repository): same as
# ks_dn_deformable_detr_r50_12ep_smlp_qkv_triple_attn.py.
from .ks_dn_deformable_detr_r50_12ep_smlp_qkv_triple_attn import dataloader, lr_multiplier, model, optimizer, train
