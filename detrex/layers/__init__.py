"""Building blocks shared by the DETR-family models (detrex names)."""

from .activation_checkpoint import CheckpointableLayer, set_activation_checkpoint
from .attention import ConditionalCrossAttention, ConditionalSelfAttention, MultiheadAttention
from .batch_norm import FrozenBatchNorm2d, get_norm
from .box_ops import (
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    inverse_sigmoid,
)
from .denoising import GenerateDNQueries, apply_box_noise, apply_label_noise, dn_post_process
from .mlp import FFN, MLP
from .multi_scale_deform_attn import (
    MultiScaleDeformableAttention,
    ms_deform_attn,
    multi_scale_deformable_attn_pytorch,
)
from .position_embedding import PositionEmbeddingLearned, PositionEmbeddingSine, get_sine_pos_embed
from .shape_spec import ShapeSpec
from .transformer import BaseTransformerLayer, TransformerLayerSequence
from .wrappers import Conv2d

__all__ = [
    "CheckpointableLayer",
    "set_activation_checkpoint",
    "MultiheadAttention",
    "ConditionalSelfAttention",
    "ConditionalCrossAttention",
    "FrozenBatchNorm2d",
    "get_norm",
    "box_area",
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_iou",
    "generalized_box_iou",
    "inverse_sigmoid",
    "GenerateDNQueries",
    "apply_label_noise",
    "apply_box_noise",
    "dn_post_process",
    "FFN",
    "MLP",
    "MultiScaleDeformableAttention",
    "ms_deform_attn",
    "multi_scale_deformable_attn_pytorch",
    "PositionEmbeddingSine",
    "PositionEmbeddingLearned",
    "get_sine_pos_embed",
    "ShapeSpec",
    "BaseTransformerLayer",
    "TransformerLayerSequence",
    "Conv2d",
]
