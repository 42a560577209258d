# Ablation: dual attention, teacher shares the student's values V (its weights A^t come from sMLP
# tokens; packed in_proj [5C, C]). 7 prediction sets, 21 loss keys. No AP reported by the authors.
from .ks_dab_detr_r101_50ep_smlp_qkv_triple_attn import dataloader, lr_multiplier, model, optimizer, train

model.transformer.encoder.ks_mode = "dual_share_v"
train.output_dir = "./output/ks_dab_detr_r101_50ep_smlp_dual_attn_share_v"
dataloader.evaluator.output_dir = train.output_dir
