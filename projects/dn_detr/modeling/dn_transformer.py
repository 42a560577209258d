"""DN-DETR transformer (Li et al. 2022): DAB-DETR's encoder and decoder, fed with given content queries
(label embeddings) and a decoder self-attention mask.

The encoder and decoder are `projects.dab_detr`'s (`DabDetrTransformerEncoder`,
`DabDetrTransformerDecoder`); only the transformer wrapper differs: the decoder's initial queries are
the label queries instead of zeros, the anchors are per image (denoising boxes differ between images),
and the self-attention gets the denoising mask.
"""

import torch

from projects.dab_detr.modeling import DabDetrTransformer

__all__ = ["DNDetrTransformer"]


class DNDetrTransformer(DabDetrTransformer):
    """`DabDetrTransformer` with content queries and a self-attention mask.

    ``forward(x, mask, anchor_box_embed, pos_embed, target=None, attn_mask=None, **kwargs)``:

    - ``anchor_box_embed``: (Q', B, 4) anchors before sigmoid (denoising boxes, then the learned anchors),
      or (Q', 4) shared by the batch;
    - ``target``: (Q', B, C) initial decoder queries (label embeddings); zeros if None (DAB-DETR);
    - ``attn_mask``: (Q', Q') bool decoder self-attention mask, True = blocked (None: no mask);
    - ``**kwargs``: extra encoder inputs (KS-DETR).

    Returns hidden states [L, B, Q', C] and reference boxes [L, B, Q', 4] (sigmoid space, normalized
    cxcywh). `decode` depends only on its arguments, so a subclass can decode several memories with the
    same queries, anchors and mask.
    """

    @staticmethod
    def flatten_inputs(x, mask, anchor_box_embed, pos_embed):
        """(B, C, H, W) features/pos -> (HW, B, C); (B, H, W) mask -> (B, HW); anchors (Q, 4) are repeated
        to (Q, B, 4), (Q, B, 4) are kept."""
        bs, c, h, w = x.shape
        x = x.view(bs, c, -1).permute(2, 0, 1)
        pos_embed = pos_embed.view(bs, c, -1).permute(2, 0, 1)
        if anchor_box_embed.dim() == 2:
            anchor_box_embed = anchor_box_embed.unsqueeze(1).repeat(1, bs, 1)
        elif anchor_box_embed.dim() != 3 or anchor_box_embed.shape[1] != bs:
            raise ValueError(
                f"DNDetrTransformer: anchor_box_embed must be (Q, 4) or (Q, {bs}, 4), "
                f"got {tuple(anchor_box_embed.shape)}"
            )
        mask = mask.view(bs, -1)
        return x, mask, anchor_box_embed, pos_embed

    def decode(self, memory, mask, pos_embed, anchor_box_embed, target=None, attn_mask=None):
        """Memory (HW, B, C) -> (hidden states [L, B, Q', C], reference boxes [L, B, Q', 4]).

        ``target`` (Q', B, C) are the initial queries (zeros if None); ``attn_mask`` (Q', Q') masks the
        self-attention only. As in detrex, the cross-attention gets no key padding mask."""
        if target is None:
            num_queries, bs = anchor_box_embed.shape[:2]
            target = torch.zeros(num_queries, bs, self.embed_dim, device=memory.device, dtype=memory.dtype)
        elif target.shape[:2] != anchor_box_embed.shape[:2]:
            raise ValueError(
                f"DNDetrTransformer: target {tuple(target.shape)} and anchors {tuple(anchor_box_embed.shape)} "
                "must have the same (queries, batch) dimensions"
            )
        return self.decoder(
            query=target,
            key=memory,
            value=memory,
            key_pos=pos_embed,
            attn_masks=[attn_mask, None],  # self-attention mask; none for the cross-attention
            anchor_box_embed=anchor_box_embed,
        )

    def forward(self, x, mask, anchor_box_embed, pos_embed, target=None, attn_mask=None, **kwargs):
        x, mask, anchor_box_embed, pos_embed = self.flatten_inputs(x, mask, anchor_box_embed, pos_embed)
        memory = self.encode(x, mask, pos_embed, **kwargs)
        return self.decode(memory, mask, pos_embed, anchor_box_embed, target=target, attn_mask=attn_mask)
