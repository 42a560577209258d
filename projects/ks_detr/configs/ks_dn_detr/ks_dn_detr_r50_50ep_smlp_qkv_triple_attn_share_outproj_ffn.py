# Name linked in the KS-DETR README (the file does not exist there): same as
# ks_dn_detr_r50_50ep_smlp_qkv_triple_attn.py.
from .ks_dn_detr_r50_50ep_smlp_qkv_triple_attn import dataloader, lr_multiplier, model, optimizer, train
