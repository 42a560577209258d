"""DN-DETR (Li et al. 2022): DAB-DETR with query denoising.

The encoder/decoder are DAB-DETR's (re-exported here under detrex's DN names); the denoising query
generator is `detrex.layers.denoising.GenerateDNQueries` and the criterion
`detrex.modeling.criterion.dn_criterion.DNCriterion`.
"""

from detrex.modeling.criterion.dn_criterion import DNCriterion
from projects.dab_detr.modeling import DabDetrTransformerDecoder as DNDetrTransformerDecoder
from projects.dab_detr.modeling import DabDetrTransformerEncoder as DNDetrTransformerEncoder

from .dn_detr import DNDETR
from .dn_transformer import DNDetrTransformer

__all__ = ["DNDETR", "DNDetrTransformer", "DNDetrTransformerEncoder", "DNDetrTransformerDecoder", "DNCriterion"]
