"""DAB-DETR (Liu et al. 2022)."""

from .dab_detr import DABDETR
from .dab_transformer import DabDetrTransformer, DabDetrTransformerDecoder, DabDetrTransformerEncoder

__all__ = ["DABDETR", "DabDetrTransformer", "DabDetrTransformerEncoder", "DabDetrTransformerDecoder"]
