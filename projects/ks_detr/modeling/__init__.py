"""KS-DETR (Zhao & Ukita 2023) on DAB-DETR: GT token mask, sMLP, triple/dual attention, KS-DAB-DETR."""
from .checkpoint import convert_ks_to_baseline
from .gt_mask import boxes_to_canvas, gt_token_mask, gt_token_mask_multi_level, resize_canvas
from .ks_dab_detr import KSDABDETR
from .ks_dab_transformer import KSDabDetrTransformer, KSDabDetrTransformerEncoder
from .smlp import KSGT, TokenSplit, sMLP
from .triple_attention import KSMultiheadTripleAttention, KSTripleAttnEncoderLayer, MultiheadTripleAttention

__all__ = [
    "KSDABDETR",
    "KSDabDetrTransformer",
    "KSDabDetrTransformerEncoder",
    "KSGT",
    "sMLP",
    "TokenSplit",
    "MultiheadTripleAttention",
    "KSMultiheadTripleAttention",
    "KSTripleAttnEncoderLayer",
    "boxes_to_canvas",
    "gt_token_mask",
    "gt_token_mask_multi_level",
    "resize_canvas",
    "convert_ks_to_baseline",
]
