"""Deformable-DETR (Zhu et al. 2021): plain, with box refinement, and two-stage."""

from .deformable_criterion import DeformableCriterion
from .deformable_detr import DeformableDETR, apply_box_deltas
from .deformable_transformer import (
    DeformableDetrTransformer,
    DeformableDetrTransformerDecoder,
    DeformableDetrTransformerEncoder,
    MultiLevelInputs,
)

__all__ = [
    "DeformableDETR",
    "DeformableCriterion",
    "DeformableDetrTransformer",
    "DeformableDetrTransformerEncoder",
    "DeformableDetrTransformerDecoder",
    "MultiLevelInputs",
    "apply_box_deltas",
]
