"""Conditional-DETR (Meng et al. 2021)."""

from .conditional_detr import ConditionalDETR
from .conditional_transformer import (
    ConditionalDetrTransformer,
    ConditionalDetrTransformerDecoder,
    ConditionalDetrTransformerEncoder,
)

__all__ = [
    "ConditionalDETR",
    "ConditionalDetrTransformer",
    "ConditionalDetrTransformerEncoder",
    "ConditionalDetrTransformerDecoder",
]
