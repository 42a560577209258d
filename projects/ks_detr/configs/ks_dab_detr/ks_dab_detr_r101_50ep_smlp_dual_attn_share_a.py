# Ablation: dual attention, teacher shares the student's attention weights A (its values V^t come from
# sMLP tokens; packed in_proj [4C, C]). 7 prediction sets, 21 loss keys. No AP reported by the authors.
from .ks_dab_detr_r101_50ep_smlp_qkv_triple_attn import dataloader, lr_multiplier, model, optimizer, train

model.transformer.encoder.ks_mode = "dual_share_a"
train.output_dir = "./output/ks_dab_detr_r101_50ep_smlp_dual_attn_share_a"
dataloader.evaluator.output_dir = train.output_dir
