"""Multi-scale deformable triple attention: KS-DETR's knowledge-sharing layer for Deformable-DETR and
DN-Deformable-DETR (Zhao & Ukita 2023; spec §4.4). Builds on multi-scale deformable attention (Zhu et al. 2021).

One deformable self-attention computes a *student* attention (the baseline's) and two *teacher* attentions on
GT-enhanced tokens ``X^t = sMLP(X, M)`` (``q^t = X^t + P``, ``v^t = X^t``). Every branch samples the same
locations (offsets always come from the student query) and uses the shared ``output_proj``:

* student: ``A = softmax(attention_weights(q))``, ``Value = value_proj(X)``;
* teacher 1 (share V and locations): own weights ``A^t = softmax(attention_weights_teacher(q^t))`` on the
  student's ``Value``;
* teacher 2 (share A and locations): the student's ``A`` on its own ``Value^t = value_proj_teacher(X^t)``.

Padded tokens are zeroed in both value tensors. Each branch is ``X + dropout(output)`` with its own dropout
sample; the encoder layer then applies the shared LayerNorm -> FFN -> LayerNorm to every branch. The student
path never reads a teacher parameter, so it is exactly the baseline layer, and dropping the two ``*_teacher``
modules from a checkpoint gives a baseline one.

Tensors are batch-first: tokens ``(B, N, C)``, positions ``(B, N, C)``, padding mask ``(B, N)`` bool (True =
padded), encoder reference points ``(B, N, L, 2)`` normalized ``(x, y)``.
"""
import copy
from typing import List, Optional, Tuple

import torch
from torch import nn

from detrex.layers import CheckpointableLayer, MultiScaleDeformableAttention

__all__ = ["KSMultiScaleTripleAttention", "KSDeformableTripleAttnEncoderLayer"]


class KSMultiScaleTripleAttention(MultiScaleDeformableAttention):
    """`MultiScaleDeformableAttention` plus the two teacher projections (authors' ``KSMultiScaleTripleAttention``).

    Extra parameters (state-dict names of the authors' checkpoints): ``attention_weights_teacher``
    Linear(C, M*L*P) and ``value_proj_teacher`` Linear(C, C). No teacher sampling offsets and no teacher
    output projection.

    ``forward`` is the inherited student attention (the baseline's call signature); `forward_teachers` runs all
    three branches.

    Init (spec §4.4, §10.1 item 4): `init_teacher_weights` zeroes ``attention_weights_teacher`` and gives
    ``value_proj_teacher`` xavier-uniform with zero bias; the transformer's ``init_weights`` then re-applies
    xavier-uniform to every matrix and re-runs only the *student* ``init_weights``, so in a built model
    ``attention_weights_teacher.weight`` is xavier (bias 0) -- what the released models started from,
    although zero was evidently intended.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.attention_weights_teacher = nn.Linear(
            self.embed_dim, self.num_heads * self.num_levels * self.num_points
        )
        self.value_proj_teacher = nn.Linear(self.embed_dim, self.embed_dim)
        self.init_teacher_weights()

    def init_teacher_weights(self) -> None:
        """Zero teacher attention weights, xavier-uniform teacher value projection with zero bias."""
        nn.init.zeros_(self.attention_weights_teacher.weight)
        nn.init.zeros_(self.attention_weights_teacher.bias)
        nn.init.xavier_uniform_(self.value_proj_teacher.weight)
        nn.init.zeros_(self.value_proj_teacher.bias)

    def forward_teachers(
        self,
        query: torch.Tensor,
        teacher_query: torch.Tensor,
        query_pos: Optional[torch.Tensor] = None,
        key_padding_mask: Optional[torch.Tensor] = None,
        reference_points: Optional[torch.Tensor] = None,
        spatial_shapes: Optional[torch.Tensor] = None,
        level_start_index: Optional[torch.Tensor] = None,
        spatial_sizes=None,
        **kwargs,
    ) -> List[torch.Tensor]:
        """Self-attention of the student and both teachers.

        Args:
            query: X, the layer input without positions, ``(B, N, C)`` (``(N, B, C)`` if not batch_first);
                also the value input and the residual.
            teacher_query: X^t = sMLP(X, M), same shape.
            query_pos: P, added to both queries (not to the values).
            key_padding_mask: ``(B, N)`` bool, True at padded tokens (zeroed in both value tensors).
            reference_points: ``(B, N, L, 2)`` normalized points; spatial_shapes ``(L, 2)``; level_start_index ``(L,)``;
                spatial_sizes: optional ``[(H_l, W_l)]`` Python ints.
            **kwargs: ignored (other attentions' inputs).

        Returns:
            ``[X + dropout(O_student), X + dropout(O_teacher1), X + dropout(O_teacher2)]`` in the layout of
            ``query``; teacher 1 shares V (and locations), teacher 2 shares A (and locations).
        """
        if spatial_shapes is None:
            raise ValueError("KSMultiScaleTripleAttention: spatial_shapes ((L, 2) int64 (H_l, W_l)) is required")
        if teacher_query.shape != query.shape:
            raise ValueError(f"KSMultiScaleTripleAttention: teacher_query {tuple(teacher_query.shape)} must have the "
                             f"shape of query {tuple(query.shape)}")
        identity = query
        if not self.batch_first:
            query, teacher_query = query.transpose(0, 1), teacher_query.transpose(0, 1)
            query_pos = None if query_pos is None else query_pos.transpose(0, 1)
        q = query if query_pos is None else query + query_pos
        q_t = teacher_query if query_pos is None else teacher_query + query_pos

        value = self.project_value(query, key_padding_mask)
        value_t = self.project_value(teacher_query, key_padding_mask, proj=self.value_proj_teacher)
        loc = self.compute_sampling_locations(q, reference_points, spatial_shapes)
        weights = self.compute_attention_weights(q)
        weights_t = self.compute_attention_weights(q_t, proj=self.attention_weights_teacher)

        outs = [
            self.attend(value, spatial_shapes, level_start_index, loc, weights, spatial_sizes),  # student
            self.attend(value, spatial_shapes, level_start_index, loc, weights_t, spatial_sizes),  # teacher 1: share V
            self.attend(value_t, spatial_shapes, level_start_index, loc, weights, spatial_sizes),  # teacher 2: share A
        ]
        if not self.batch_first:
            outs = [o.transpose(0, 1) for o in outs]
        return [identity + self.dropout(o) for o in outs]  # one dropout sample per branch


class KSDeformableTripleAttnEncoderLayer(CheckpointableLayer, nn.Module):
    """Post-norm deformable encoder layer ``self_attn -> norm -> ffn -> norm`` with triple attention.

    Submodule names follow detrex's ``BaseTransformerLayer`` (``attentions.0``, ``ffns.0``, ``norms.0/1``), so
    the authors' keys load. The same ``attentions.0.output_proj``, ``norms.0``, ``ffns.0`` and ``norms.1``
    process every branch.

    Args:
        attn: the `KSMultiScaleTripleAttention`.
        ffn: detrex ``FFN`` (``forward(x)`` returns ``x + layers(x)``).
        norm: a LayerNorm, copied for the two norm positions.

    ``forward`` has the baseline layer's call signature and runs the student only; `forward_teachers`
    returns ``(E_student, [E_teacher1, E_teacher2])``. Both are checkpointed as one unit when
    ``use_checkpoint`` is set (`detrex.layers.set_activation_checkpoint`).
    """

    operation_order = ("self_attn", "norm", "ffn", "norm")

    def __init__(self, attn: KSMultiScaleTripleAttention, ffn: nn.Module, norm: nn.Module):
        super().__init__()
        if not isinstance(attn, KSMultiScaleTripleAttention):
            raise TypeError("KSDeformableTripleAttnEncoderLayer: attn must be a KSMultiScaleTripleAttention, "
                            f"got {type(attn).__name__}")
        self.attentions = nn.ModuleList([attn])
        self.ffns = nn.ModuleList([ffn])
        self.norms = nn.ModuleList([copy.deepcopy(norm), copy.deepcopy(norm)])
        self.embed_dim = attn.embed_dim
        self.num_attn = 1
        self.pre_norm = False
        self.batch_first = attn.batch_first

    def _after_attention(self, y: torch.Tensor) -> torch.Tensor:
        return self.norms[1](self.ffns[0](self.norms[0](y)))

    def forward(self, query, key=None, value=None, query_pos=None, key_pos=None, attn_masks=None,
                query_key_padding_mask=None, key_padding_mask=None, **kwargs) -> torch.Tensor:
        """Student path, identical to the baseline ``BaseTransformerLayer``: deformable self-attention on
        ``query`` with ``query_pos`` and ``query_key_padding_mask`` (B, N); ``reference_points``,
        ``spatial_shapes``, ``level_start_index`` come in ``kwargs``. ``key``/``value``/``key_padding_mask``
        are ignored (self-attention)."""
        attn_mask = attn_masks[0] if isinstance(attn_masks, (list, tuple)) else attn_masks
        y = self.attentions[0](query, query, query, None, query_pos=query_pos, key_pos=query_pos,
                               attn_mask=attn_mask, key_padding_mask=query_key_padding_mask, **kwargs)
        return self._after_attention(y)

    def forward_teachers(self, query, teacher_query, query_pos=None, query_key_padding_mask=None,
                         **kwargs) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Student and teacher outputs.

        Args:
            query: X (B, N, C), the layer input without positions.
            teacher_query: X^t = sMLP(X, M), (B, N, C).
            query_pos: P (B, N, C), shared by all branches.
            query_key_padding_mask: (B, N) bool, True = padded.
            **kwargs: ``reference_points``, ``spatial_shapes``, ``level_start_index`` for the attention.
        Returns:
            (E_student, [E_teacher1 (share V), E_teacher2 (share A)]), each (B, N, C).
        """
        return self.run_checkpointed(self._forward_teachers, query, teacher_query, query_pos=query_pos,
                                     query_key_padding_mask=query_key_padding_mask, **kwargs)

    def _forward_teachers(self, query, teacher_query, query_pos=None, query_key_padding_mask=None, **kwargs):
        ys = self.attentions[0].forward_teachers(query, teacher_query, query_pos=query_pos,
                                                 key_padding_mask=query_key_padding_mask, **kwargs)
        outs = [self._after_attention(y) for y in ys]
        return outs[0], outs[1:]
