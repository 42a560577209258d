"""DAB-DETR transformer (Liu et al. 2022, "DAB-DETR: Dynamic Anchor Boxes are Better Queries for
DETR"), with detrex's module layout so the authors' / detrex checkpoints load.

Shapes are sequence-first: tokens (HW, B, C), queries (Q, B, C). Boxes are normalized cxcywh; the decoder
keeps reference boxes in sigmoid space.
"""

from typing import Tuple

import torch
import torch.nn as nn

from detrex.layers import MLP, get_sine_pos_embed, inverse_sigmoid
from detrex.layers.detr_transformer import (
    ConditionalDecoder,
    DetrEncoder,
    SingleScaleDetrTransformer,
    post_norm_encoder_layer,
)

__all__ = ["DabDetrTransformerEncoder", "DabDetrTransformerDecoder", "DabDetrTransformer"]


class DabDetrTransformerEncoder(DetrEncoder):
    """Post-norm encoder whose positional embedding is rescaled per layer by ``query_scale(x)``, an
    MLP(C, C, C, 2) of the layer input (Conditional-DETR/DAB-DETR).

    Layers: ``BaseTransformerLayer(MultiheadAttention, FFN, LayerNorm, ("self_attn", "norm", "ffn",
    "norm"))``. ``layers`` may also be given directly (a list of modules with the same call signature),
    which is how KS-DETR swaps in its triple-attention last layer.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        attn_dropout: float = 0.0,
        feedforward_dim: int = 2048,
        ffn_dropout: float = 0.0,
        activation: nn.Module = None,
        operation_order: Tuple[str, ...] = ("self_attn", "norm", "ffn", "norm"),
        post_norm: bool = False,
        num_layers: int = 6,
        batch_first: bool = False,
        layers=None,
    ):
        if layers is None:
            activation = activation if activation is not None else nn.PReLU()
            layers = post_norm_encoder_layer(embed_dim, num_heads, attn_dropout, feedforward_dim, ffn_dropout,
                                             activation, operation_order, batch_first)
        super().__init__(transformer_layers=layers, num_layers=num_layers if isinstance(layers, nn.Module) else None)
        self.embed_dim = embed_dim
        self.pre_norm = self.layers[0].pre_norm
        self.query_scale = MLP(embed_dim, embed_dim, embed_dim, 2)
        self.post_norm_layer = nn.LayerNorm(embed_dim) if post_norm else None

    def layer_position(self, query, query_pos):
        """``query_pos * query_scale(query)``: the positional embedding rescaled by the layer input (forward:
        `DetrEncoder`'s; extra keyword arguments reach every layer, a KS layer reads its token mask there)."""
        position_scales = self.query_scale(query)
        return query_pos * position_scales


class DabDetrTransformerDecoder(ConditionalDecoder):
    """DAB-DETR decoder: queries carry anchor boxes (cx, cy, w, h) that every layer refines.

    Per layer: the sine embedding of the current box (2C channels) gives the query position through
    ``ref_point_head`` (MLP 2C -> C -> C); its first C channels, scaled by ``query_scale(query)`` (not in
    layer 0) and, with ``modulate_hw_attn``, by ``ref_anchor_head(query).sigmoid() / (w, h)``, are the
    cross-attention's spatial query. Layers are those of `ConditionalDecoder` (Conditional-DETR's). After
    each layer, if ``bbox_embed`` is set (the detector registers its box head here), boxes are refined:
    ``sigmoid(bbox_embed(q) + inverse_sigmoid(box))``, detached before the next layer.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        attn_dropout: float = 0.0,
        feedforward_dim: int = 2048,
        ffn_dropout: float = 0.0,
        activation: nn.Module = None,
        operation_order: Tuple[str, ...] = ("self_attn", "norm", "cross_attn", "norm", "ffn", "norm"),
        num_layers: int = 6,
        modulate_hw_attn: bool = True,
        batch_first: bool = False,
        post_norm: bool = True,
        return_intermediate: bool = True,
    ):
        activation = activation if activation is not None else nn.PReLU()
        super().__init__(embed_dim, num_heads, attn_dropout, feedforward_dim, ffn_dropout, activation,
                         operation_order, num_layers, batch_first, post_norm, return_intermediate,
                         ref_point_in=2 * embed_dim, ref_point_out=embed_dim, modulate_hw_attn=modulate_hw_attn)
        self.bbox_embed = None  # set by the detector (shared box head) for iterative anchor refinement

    def forward(
        self,
        query,
        key,
        value,
        query_pos=None,
        key_pos=None,
        attn_masks=None,
        query_key_padding_mask=None,
        key_padding_mask=None,
        anchor_box_embed=None,
        **kwargs,
    ):
        """
        Args:
            query: (Q, B, C) initial content queries (zeros in DAB-DETR).
            key, value: (HW, B, C) encoder memory; key_pos: (HW, B, C) its positional embedding.
            key_padding_mask: (B, HW) for the cross-attention (detrex's DAB-DETR passes None).
            anchor_box_embed: (Q, B, 4) anchors before sigmoid.

        Returns:
            hidden states [L, B, Q, C] (post-norm applied) and the reference boxes each layer's outputs
            refine [L, B, Q, 4] (sigmoid space; entry 0 = the initial anchors). Without ``bbox_embed``
            the second output is [1, B, Q, 4].
        """
        intermediate = []
        reference_boxes = anchor_box_embed.sigmoid()
        intermediate_ref_boxes = [reference_boxes]
        c = self.embed_dim
        for idx in range(self.num_layers):
            obj_center = reference_boxes
            # (Q, B, 2C): C/2 channels per box coordinate (detrex hard-codes 128, i.e. C = 256)
            query_sine_embed = get_sine_pos_embed(obj_center, num_pos_feats=c // 2)
            query_pos = self.ref_point_head(query_sine_embed)
            position_transform = 1 if idx == 0 else self.query_scale(query)
            query_sine_embed = query_sine_embed[..., :c] * position_transform
            if self.modulate_hw_attn:
                ref_hw_cond = self.ref_anchor_head(query).sigmoid()  # (Q, B, 2)
                # channels [:C/2] embed y, [C/2:] embed x (get_sine_pos_embed swaps x and y)
                query_sine_embed[..., c // 2 :] *= (ref_hw_cond[..., 0] / obj_center[..., 2]).unsqueeze(-1)
                query_sine_embed[..., : c // 2] *= (ref_hw_cond[..., 1] / obj_center[..., 3]).unsqueeze(-1)
            query = self.run_layer(idx, query, key, value, query_pos, key_pos, query_sine_embed, attn_masks,
                                   query_key_padding_mask, key_padding_mask, **kwargs)
            if self.bbox_embed is not None:
                offsets = self.bbox_embed(query)
                new_reference_boxes = (offsets + inverse_sigmoid(reference_boxes)).sigmoid()
                if idx != self.num_layers - 1:
                    intermediate_ref_boxes.append(new_reference_boxes)
                reference_boxes = new_reference_boxes.detach()
            if self.return_intermediate:
                intermediate.append(self.normed(query))

        hidden_states = self.stack_outputs(intermediate, query)
        if self.bbox_embed is not None:
            return hidden_states, torch.stack(intermediate_ref_boxes).transpose(1, 2)
        return hidden_states, reference_boxes.unsqueeze(0).transpose(1, 2)


class DabDetrTransformer(SingleScaleDetrTransformer):
    """Encoder + decoder of DAB-DETR (`SingleScaleDetrTransformer` whose queries are anchor boxes).

    ``forward(x, mask, anchor_box_embed, pos_embed, **kwargs)``: x (B, C, H, W) projected features, mask
    (B, H, W) True = padding, anchor_box_embed (Q, 4) learned anchors before sigmoid, pos_embed (B, C, H, W),
    kwargs extra encoder inputs (KS-DETR: a GT token mask in training). Subclasses (KS-DETR) may call `decode`
    several times on different memories: it depends only on its arguments.

    Returns:
        hidden states [L, B, Q, C] and reference boxes [L, B, Q, 4] (normalized cxcywh, sigmoid space).
    """

    def decode(self, memory, mask, pos_embed, anchor_box_embed):
        """Memory (HW, B, C) -> (hidden states [L, B, Q, C], reference boxes [L, B, Q, 4]).

        As in detrex's DAB-DETR, the cross-attention gets no key padding mask (``mask`` is unused here;
        it is accepted so subclasses can change that)."""
        num_queries, bs = anchor_box_embed.shape[:2]
        target = torch.zeros(num_queries, bs, self.embed_dim, device=memory.device, dtype=memory.dtype)
        return self.decoder(
            query=target, key=memory, value=memory, key_pos=pos_embed, anchor_box_embed=anchor_box_embed
        )
