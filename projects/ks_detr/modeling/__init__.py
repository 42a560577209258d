"""KS-DETR (Zhao & Ukita 2023): GT token mask, sMLP, triple/dual attention; KS-DAB-, KS-Conditional- and
KS-DN-DETR."""
from .checkpoint import convert_ks_to_baseline
from .gt_mask import boxes_to_canvas, gt_token_mask, gt_token_mask_multi_level, resize_canvas
from .ks_conditional_detr import KSConditionalDETR
from .ks_conditional_transformer import KSConditionalDetrTransformer, KSConditionalDetrTransformerEncoder
from .ks_dab_detr import KSDABDETR
from .ks_dab_transformer import KSDabDetrTransformer, KSDabDetrTransformerEncoder
from .ks_dn_detr import KSDNDETR
from .ks_dn_transformer import KSDNDetrTransformer, KSDNDetrTransformerEncoder
from .deformable_triple_attention import KSDeformableTripleAttnEncoderLayer, KSMultiScaleTripleAttention
from .ks_deformable_detr import KSDeformableDETR
from .ks_deformable_transformer import KSDeformableDetrTransformer, KSDNDeformableDetrTransformer
from .ks_dn_deformable_detr import KSDNDeformableDETR
from .smlp import KSGT, TokenSplit, sMLP
from .triple_attention import (
    KSEncoderMixin,
    KSMultiheadTripleAttention,
    KSTripleAttnEncoderLayer,
    MultiheadTripleAttention,
)

__all__ = [
    "KSDABDETR",
    "KSDabDetrTransformer",
    "KSDabDetrTransformerEncoder",
    "KSConditionalDETR",
    "KSConditionalDetrTransformer",
    "KSConditionalDetrTransformerEncoder",
    "KSDNDETR",
    "KSDNDetrTransformer",
    "KSDNDetrTransformerEncoder",
    "KSEncoderMixin",
    "KSDeformableDETR",
    "KSDeformableDetrTransformer",
    "KSDNDeformableDETR",
    "KSDNDeformableDetrTransformer",
    "KSMultiScaleTripleAttention",
    "KSDeformableTripleAttnEncoderLayer",
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
