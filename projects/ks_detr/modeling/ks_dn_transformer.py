"""KS-DN-DETR transformer: DN-DETR's transformer (DAB-DETR's encoder and decoder) with a triple-attention last
encoder layer whose teacher memories are decoded by the same decoder in training (KS-DETR, Zhao & Ukita 2023;
spec §4.2).

The teacher passes get exactly the student's decoder inputs: the same noised denoising queries and
anchors, the same learned anchors and the same self-attention mask, so the denoising part of every
prediction set can be supervised (spec §5). Sequence-first shapes as in ``projects/dn_detr``.
"""
import torch

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
      (Q', B, C), anchors (Q', B, 4) and ``attn_mask`` (Q', Q'). Returns hidden states and reference boxes
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
        decoder_inputs = dict(target=target, attn_mask=attn_mask)
        hidden_states, reference_boxes = self.decode(memory, mask, pos_embed, anchor_box_embed, **decoder_inputs)
        hs, refs = [hidden_states], [reference_boxes]
        for t_memory in teacher_memories:
            t_hidden, t_ref = self.decode(t_memory, mask, pos_embed, anchor_box_embed, **decoder_inputs)
            hs.append(t_hidden[-1:])
            refs.append(t_ref[-1:])
        return torch.cat(hs, dim=0), torch.cat(refs, dim=0)
