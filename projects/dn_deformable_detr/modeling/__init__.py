"""DN-Deformable-DETR (Li et al. 2022): Deformable-DETR with anchor-box queries, box refinement and query
denoising. The denoising generator is `detrex.layers.denoising.GenerateDNQueries` and the criterion
`detrex.modeling.criterion.dn_criterion.DNCriterion` (re-exported here under detrex's names)."""

from detrex.modeling.criterion.dn_criterion import DNCriterion

from .dn_deformable_detr import DNDeformableDETR
from .dn_deformable_transformer import (
    DNDeformableDetrTransformer,
    DNDeformableDetrTransformerDecoder,
    DNDeformableDetrTransformerEncoder,
)

__all__ = [
    "DNDeformableDETR",
    "DNDeformableDetrTransformer",
    "DNDeformableDetrTransformerEncoder",
    "DNDeformableDetrTransformerDecoder",
    "DNCriterion",
]
