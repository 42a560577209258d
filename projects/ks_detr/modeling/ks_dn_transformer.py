"""KS-DN-DETR transformer: DN-DETR's transformer (DAB-DETR's encoder and decoder) with a triple-attention last
encoder layer whose teacher memories are decoded by the same decoder in training (KS-DETR, Zhao & Ukita 2023;
spec §4.2).

The teacher passes get exactly the student's decoder inputs: the same noised denoising queries and
anchors, the same learned anchors and the same self-attention mask, so the denoising part of every
prediction set can be supervised (spec §5). Sequence-first shapes as in ``projects/dn_detr``.
"""
import torch

from detrex.layers.batched_passes import repeat_batch, student_and_teacher_layers
from projects.dn_detr.modeling import DNDetrTransformer

from .ks_dab_transformer import KSDabDetrTransformerEncoder

__all__ = ["KSDNDetrTransformerEncoder", "KSDNDetrTransformer"]

# DN-DETR's encoder is DAB-DETR's (positional embedding scaled by query_scale in every layer).
KSDNDetrTransformerEncoder = KSDabDetrTransformerEncoder


class KSDNDetrTransformer(DNDetrTransformer):
    """`DNDetrTransformer` that, given ``ks_teacher_tokens``, also decodes the teacher memories.

    ``forward(x, mask, anchor_box_embed, pos_embed, target=None, attn_mask=None, ks_teacher_tokens=None)``:

    * without ``ks_teacher_tokens`` (eval, or no ground truth): exactly the baseline;
    * with it (training): the student memory and each teacher memory are decoded with the same ``target``
      (Q', B, C), anchors (Q', B, 4) and ``attn_mask`` (Q', Q'), as one pass over the stacked batch. Returns hidden states and reference boxes
      [L + T, B, Q', ...]: the L student decoder layers, then the final layer of each teacher (triple:
      teacher 1 share V, then teacher 2 share A). ``dn_post_process`` then splits every entry.
    """

    def forward(self, x, mask, anchor_box_embed, pos_embed, target=None, attn_mask=None, ks_teacher_tokens=None,
                **kwargs):
        if ks_teacher_tokens is None:
            return super().forward(x, mask, anchor_box_embed, pos_embed, target=target, attn_mask=attn_mask,
                                   **kwargs)
        if not hasattr(self.encoder, "forward_teachers"):
            raise TypeError(f"KSDNDetrTransformer: encoder {type(self.encoder).__name__} has no KS layer; "
                            "use KSDNDetrTransformerEncoder.")
        x, mask, anchor_box_embed, pos_embed = self.flatten_inputs(x, mask, anchor_box_embed, pos_embed)
        memory, teacher_memories = self.encoder.forward_teachers(x, pos_embed, mask, ks_teacher_tokens)
        # one decoder pass for the student and the teachers: memories stacked along the batch (dim 1); the
        # self-attention mask (Q', Q') is the same for every batch entry
        n = 1 + len(teacher_memories)
        hidden_states, reference_boxes = self.decode(
            torch.cat([memory, *teacher_memories], 1), repeat_batch(mask, n, 0), repeat_batch(pos_embed, n, 1),
            repeat_batch(anchor_box_embed, n, 1), target=repeat_batch(target, n, 1), attn_mask=attn_mask)
        return student_and_teacher_layers(hidden_states, n), student_and_teacher_layers(reference_boxes, n)
