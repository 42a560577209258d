"""KS-DAB-DETR transformer: DAB-DETR's transformer with a triple-attention last encoder layer whose teacher
memories are decoded by the same decoder in training (KS-DETR, Zhao & Ukita 2023; spec §4.2).

Only the last encoder layer is a KS layer (the authors' ``regular_5-TripleAttnQKVShareAV_1``): earlier
placements would need the teacher memories to go through the remaining layers, which the method does not
define. Sequence-first shapes as in ``projects/dab_detr``.
"""

import torch

from detrex.layers.batched_passes import repeat_batch, student_and_teacher_layers
from projects.dab_detr.modeling import DabDetrTransformer, DabDetrTransformerEncoder

from .triple_attention import KSEncoderMixin

__all__ = ["KSDabDetrTransformerEncoder", "KSDabDetrTransformer"]


class KSDabDetrTransformerEncoder(KSEncoderMixin, DabDetrTransformerEncoder):
    """DAB-DETR encoder whose last layer is a `KSTripleAttnEncoderLayer` (see `KSEncoderMixin`).

    Arguments are `DabDetrTransformerEncoder`'s plus:
        ks_mode: ``"triple"`` (default), ``"dual_share_a"`` or ``"dual_share_v"``.
        proj_drop: dropout on the KS attention output before the residual (0.0 in all configs).

    The KS layer reuses the regular layers' FFN and LayerNorm configuration. ``forward`` is the baseline
    (student) encoder; `forward_teachers` also returns the teacher memories. Every layer, the KS layer's
    teachers included, uses the positional embedding scaled by ``query_scale`` of its input.
    """

    def __init__(self, *args, ks_mode: str = "triple", proj_drop: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.install_ks_layer(ks_mode, proj_drop)

    def layer_pos(self, query: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        return query_pos * self.query_scale(query)


class KSDabDetrTransformer(DabDetrTransformer):
    """`DabDetrTransformer` that, given ``ks_teacher_tokens``, also decodes the teacher memories.

    ``forward(x, mask, anchor_box_embed, pos_embed, ks_teacher_tokens=None)``:

    * without ``ks_teacher_tokens`` (eval, or no ground truth): exactly the baseline;
    * with it (training): the student memory and each teacher memory go through the *same* decoder with
      identical inputs (anchors, positional embedding, mask), as one pass over the stacked batch. Returns hidden states and reference boxes
      [L + T, B, Q, ...]: the L student decoder layers, then the final layer of each teacher
      (triple: teacher 1 share V, then teacher 2 share A).
    """

    def forward(self, x, mask, anchor_box_embed, pos_embed, ks_teacher_tokens=None, **kwargs):
        if ks_teacher_tokens is None:
            return super().forward(x, mask, anchor_box_embed, pos_embed, **kwargs)
        if not hasattr(self.encoder, "forward_teachers"):
            raise TypeError(f"KSDabDetrTransformer: encoder {type(self.encoder).__name__} has no KS layer; "
                            "use KSDabDetrTransformerEncoder.")
        x, mask, anchor_box_embed, pos_embed = self.flatten_inputs(x, mask, anchor_box_embed, pos_embed)
        memory, teacher_memories = self.encoder.forward_teachers(x, pos_embed, mask, ks_teacher_tokens)
        # one decoder pass for the student and the teachers: memories stacked along the batch (dim 1)
        n = 1 + len(teacher_memories)
        hidden_states, reference_boxes = self.decode(
            torch.cat([memory, *teacher_memories], 1), repeat_batch(mask, n, 0), repeat_batch(pos_embed, n, 1),
            repeat_batch(anchor_box_embed, n, 1))
        return student_and_teacher_layers(hidden_states, n), student_and_teacher_layers(reference_boxes, n)
