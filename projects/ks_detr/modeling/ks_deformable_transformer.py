"""KS-Deformable-DETR and KS-DN-Deformable-DETR transformers (KS-DETR, Zhao & Ukita 2023; spec §4.2, §4.4).

The baseline transformers (`projects.deformable_detr`, `projects.dn_deformable_detr`) with the last encoder
layer replaced by a `KSDeformableTripleAttnEncoderLayer` (the authors' ``regular_5-DeformableTripleAttnShareAV_1``).
Only the last layer can be a KS layer: the teacher memories are decoded directly, not passed through further
encoder layers.

* ``forward`` / ``encode`` / ``decode`` are the baseline's (student only: eval, and anything without ground truth);
* `encode_teachers(levels, teacher_tokens)` returns the student memory and the two teacher memories; the
  detector then decodes each of them with the same decoder inputs (``decode(teacher_memory, ...)``, which
  uses it as the cross-attention value, and for DN-Deformable-DETR also as the key).

Shapes are batch-first, as in the baselines.
"""
import copy
from typing import Callable, List, Tuple

import torch

from projects.deformable_detr.modeling.deformable_transformer import (
    DeformableDetrTransformer,
    DeformableDetrTransformerEncoder,
    MultiLevelInputs,
)
from projects.dn_deformable_detr.modeling.dn_deformable_transformer import (
    DNDeformableDetrTransformer,
    DNDeformableDetrTransformerEncoder,
)

from .deformable_triple_attention import KSDeformableTripleAttnEncoderLayer, KSMultiScaleTripleAttention

__all__ = [
    "KSDeformableEncoderMixin",
    "KSDeformableDetrTransformerEncoder",
    "KSDNDeformableDetrTransformerEncoder",
    "KSDeformableTransformerMixin",
    "KSDeformableDetrTransformer",
    "KSDNDeformableDetrTransformer",
]

TeacherTokens = Callable[..., torch.Tensor]


class KSDeformableEncoderMixin:
    """Turns a post-norm deformable encoder into a KS encoder.

    Mix in before the baseline encoder class and call `install_ks_layer` at the end of ``__init__``: the last
    layer is replaced, in place, by a `KSDeformableTripleAttnEncoderLayer` with the same attention settings
    (heads, levels, points, dropout), FFN and LayerNorm, so state-dict names and order stay the baseline's
    plus the two ``*_teacher`` modules. ``forward`` stays the baseline (student) encoder.
    """

    def install_ks_layer(self, ks_mode: str = "triple") -> None:
        if ks_mode != "triple":
            raise ValueError(f"{type(self).__name__}: ks_mode={ks_mode!r}; the deformable KS layer exists only as "
                             "'triple' (DeformableTripleAttnShareAV; the dual ablations are single-scale only)")
        template = self.layers[-1]
        if getattr(template, "operation_order", None) != ("self_attn", "norm", "ffn", "norm"):
            raise ValueError(f"{type(self).__name__}: the regular layers must be post-norm "
                             "('self_attn', 'norm', 'ffn', 'norm') to build the KS layer from them")
        base = template.attentions[0]
        attn = KSMultiScaleTripleAttention(
            embed_dim=base.embed_dim, num_heads=base.num_heads, num_levels=base.num_levels,
            num_points=base.num_points, img2col_step=base.im2col_step, dropout=base.dropout.p,
            batch_first=base.batch_first,
        )
        self.layers[-1] = KSDeformableTripleAttnEncoderLayer(attn, copy.deepcopy(template.ffns[0]), template.norms[0])
        self.ks_mode = ks_mode

    def forward_teachers(self, query, query_pos, query_key_padding_mask, teacher_tokens: TeacherTokens,
                         **kwargs) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Encode with the teachers.

        Args:
            query: (B, N, C) flattened multi-level tokens; query_pos: (B, N, C); query_key_padding_mask:
                (B, N) bool, True = pad.
            teacher_tokens: ``f(x, padding_mask=...) -> X^t`` on batch-first tokens (the detector's sMLP bound
                to this batch's GT token mask), applied to the KS layer's input.
            **kwargs: ``reference_points``, ``spatial_shapes``, ``level_start_index``, ``valid_ratios``.
        Returns:
            student memory (B, N, C) and [teacher 1 (share V), teacher 2 (share A)] memories.
        """
        for layer in self.layers[:-1]:
            query = layer(query, None, None, query_pos=query_pos, query_key_padding_mask=query_key_padding_mask,
                          **kwargs)
        teacher_query = teacher_tokens(query, padding_mask=query_key_padding_mask)
        memory, teachers = self.layers[-1].forward_teachers(
            query, teacher_query, query_pos=query_pos, query_key_padding_mask=query_key_padding_mask, **kwargs)
        if self.post_norm_layer is not None:
            memory = self.post_norm_layer(memory)
            teachers = [self.post_norm_layer(t) for t in teachers]
        return memory, teachers


class KSDeformableDetrTransformerEncoder(KSDeformableEncoderMixin, DeformableDetrTransformerEncoder):
    """`DeformableDetrTransformerEncoder` whose last layer is the deformable triple-attention layer.

    Arguments are the baseline's plus ``ks_mode`` (only ``"triple"``).
    """

    def __init__(self, *args, ks_mode: str = "triple", **kwargs):
        super().__init__(*args, **kwargs)
        self.install_ks_layer(ks_mode)


class KSDNDeformableDetrTransformerEncoder(KSDeformableEncoderMixin, DNDeformableDetrTransformerEncoder):
    """`DNDeformableDetrTransformerEncoder` whose last layer is the deformable triple-attention layer."""

    def __init__(self, *args, ks_mode: str = "triple", **kwargs):
        super().__init__(*args, **kwargs)
        self.install_ks_layer(ks_mode)


class KSDeformableTransformerMixin:
    """Adds `encode_teachers` to a deformable transformer (mirrors its ``encode``)."""

    def encode_teachers(self, levels: MultiLevelInputs, teacher_tokens: TeacherTokens,
                        **kwargs) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Student memory (B, N, C) and the teacher memories [(B, N, C), (B, N, C)] (share V, share A)."""
        if not hasattr(self.encoder, "forward_teachers"):
            raise TypeError(f"{type(self).__name__}: encoder {type(self.encoder).__name__} has no KS layer; use "
                            "KSDeformableDetrTransformerEncoder / KSDNDeformableDetrTransformerEncoder")
        return self.encoder.forward_teachers(
            levels.feat_flatten,
            levels.pos_flatten,
            levels.mask_flatten,
            teacher_tokens,
            spatial_shapes=levels.spatial_shapes,
            reference_points=levels.reference_points,
            level_start_index=levels.level_start_index,
            valid_ratios=levels.valid_ratios,
            spatial_sizes=levels.spatial_sizes,
            **kwargs,
        )


class KSDeformableDetrTransformer(KSDeformableTransformerMixin, DeformableDetrTransformer):
    """`DeformableDetrTransformer` with `encode_teachers`; its encoder must be a KS encoder."""


class KSDNDeformableDetrTransformer(KSDeformableTransformerMixin, DNDeformableDetrTransformer):
    """`DNDeformableDetrTransformer` with `encode_teachers`; its encoder must be a KS encoder."""
