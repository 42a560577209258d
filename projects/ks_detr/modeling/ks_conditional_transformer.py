"""KS-Conditional-DETR transformer: Conditional-DETR's transformer with a triple-attention last encoder layer
whose teacher memories are decoded by the same decoder in training (KS-DETR, Zhao & Ukita 2023; spec §4.2).

Conditional-DETR's encoder adds the plain sine positional embedding P in every layer (no ``query_scale``), so
the teachers use ``X^t + P`` for queries/keys. Sequence-first shapes as in ``projects/conditional_detr``.
"""
import torch

from detrex.layers.batched_passes import repeat_batch, student_and_teacher_layers
from projects.conditional_detr.modeling import ConditionalDetrTransformer, ConditionalDetrTransformerEncoder

from .triple_attention import KSEncoderMixin

__all__ = ["KSConditionalDetrTransformerEncoder", "KSConditionalDetrTransformer"]


class KSConditionalDetrTransformerEncoder(KSEncoderMixin, ConditionalDetrTransformerEncoder):
    """Conditional-DETR encoder whose last layer is a `KSTripleAttnEncoderLayer` (see `KSEncoderMixin`).

    Arguments are `ConditionalDetrTransformerEncoder`'s plus ``ks_mode`` (``"triple"``, ``"dual_share_a"``,
    ``"dual_share_v"``) and ``proj_drop`` (dropout on the KS attention output, 0.0 in all configs). The KS
    layer keeps the regular layers' attention dropout (0.1), FFN and LayerNorm settings.
    """

    def __init__(self, *args, ks_mode: str = "triple", proj_drop: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.install_ks_layer(ks_mode, proj_drop)


class KSConditionalDetrTransformer(ConditionalDetrTransformer):
    """`ConditionalDetrTransformer` that, given ``ks_teacher_tokens``, also decodes the teacher memories.

    ``forward(x, mask, query_embed, pos_embed, ks_teacher_tokens=None)``:

    * without ``ks_teacher_tokens`` (eval, or no ground truth): exactly the baseline;
    * with it (training): the student memory and each teacher memory go through the *same* decoder with
      identical inputs (query embeddings, positional embedding), as one pass over the stacked batch. Returns hidden states [L + T, B, Q, C] --
      the L student decoder layers, then the final layer of each teacher (triple: teacher 1 share V, then
      teacher 2 share A) -- and the reference points [B, Q, 2]. The reference points come from the query
      embeddings only, so they are the same for every pass and every entry.
    """

    def forward(self, x, mask, query_embed, pos_embed, ks_teacher_tokens=None, **kwargs):
        if ks_teacher_tokens is None:
            return super().forward(x, mask, query_embed, pos_embed, **kwargs)
        if not hasattr(self.encoder, "forward_teachers"):
            raise TypeError(f"KSConditionalDetrTransformer: encoder {type(self.encoder).__name__} has no KS layer; "
                            "use KSConditionalDetrTransformerEncoder.")
        x, mask, query_embed, pos_embed = self.flatten_inputs(x, mask, query_embed, pos_embed)
        memory, teacher_memories = self.encoder.forward_teachers(x, pos_embed, mask, ks_teacher_tokens)
        # one decoder pass for the student and the teachers: memories stacked along the batch (dim 1)
        n = 1 + len(teacher_memories)
        hidden_states, reference_points = self.decode(
            torch.cat([memory, *teacher_memories], 1), repeat_batch(mask, n, 0), repeat_batch(pos_embed, n, 1),
            repeat_batch(query_embed, n, 1))
        return student_and_teacher_layers(hidden_states, n), reference_points[:memory.shape[1]]
