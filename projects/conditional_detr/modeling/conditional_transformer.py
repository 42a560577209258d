"""Conditional-DETR transformer (Meng et al. 2021, "Conditional DETR for Fast Training Convergence"), with
detrex's module layout so detrex checkpoints and converted KS-DETR checkpoints load.

Shapes are sequence-first: tokens (HW, B, C), queries (Q, B, C). Reference points are normalized (x, y) in
[0, 1] of the unpadded image.
"""

from typing import Tuple

import torch
import torch.nn as nn

from detrex.layers import get_sine_pos_embed
from detrex.layers.detr_transformer import (
    ConditionalDecoder,
    DetrEncoder,
    SingleScaleDetrTransformer,
    post_norm_encoder_layer,
)

__all__ = ["ConditionalDetrTransformerEncoder", "ConditionalDetrTransformerDecoder", "ConditionalDetrTransformer"]


class ConditionalDetrTransformerEncoder(DetrEncoder):
    """DETR's post-norm encoder: the sine positional embedding is added to queries and keys of every layer
    (no per-layer rescaling, unlike DAB-DETR).

    Layers: ``BaseTransformerLayer(MultiheadAttention, FFN, LayerNorm, ("self_attn", "norm", "ffn",
    "norm"))``. ``layers`` may be given directly instead (a list of modules with the same call signature),
    e.g. to swap in a KS-DETR triple-attention last layer.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        attn_dropout: float = 0.1,
        feedforward_dim: int = 2048,
        ffn_dropout: float = 0.1,
        activation: nn.Module = None,
        operation_order: Tuple[str, ...] = ("self_attn", "norm", "ffn", "norm"),
        post_norm: bool = False,
        num_layers: int = 6,
        batch_first: bool = False,
        layers=None,
    ):
        if layers is None:
            activation = activation if activation is not None else nn.ReLU(inplace=True)
            layers = post_norm_encoder_layer(embed_dim, num_heads, attn_dropout, feedforward_dim, ffn_dropout,
                                             activation, operation_order, batch_first)
        super().__init__(transformer_layers=layers, num_layers=num_layers if isinstance(layers, nn.Module) else None)
        self.embed_dim = embed_dim
        self.pre_norm = self.layers[0].pre_norm
        self.post_norm_layer = nn.LayerNorm(embed_dim) if post_norm else None
        # forward: `DetrEncoder`'s (every layer gets the unscaled positional embedding)


class ConditionalDetrTransformerDecoder(ConditionalDecoder):
    """Conditional-DETR decoder.

    Each learned query embedding ``query_pos`` (Q, B, C) gives a fixed 2-d reference point
    ``sigmoid(ref_point_head(query_pos))`` (``ref_point_head`` = MLP(C, C, 2, 2)); it is the same for all
    layers. Per layer, the sine embedding of that point (C channels), scaled by ``query_scale(query)``
    (except in layer 0), is the cross-attention's spatial query; ``query_pos`` is the self-attention's
    positional query and, in layer 0 only, is added to the cross-attention's content query. Layers are
    conditional self-attention -> norm -> conditional cross-attention -> norm -> FFN -> norm; every layer's
    output goes through the shared ``post_norm_layer`` (see `ConditionalDecoder`).
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        attn_dropout: float = 0.1,
        feedforward_dim: int = 2048,
        ffn_dropout: float = 0.1,
        activation: nn.Module = None,
        operation_order: Tuple[str, ...] = ("self_attn", "norm", "cross_attn", "norm", "ffn", "norm"),
        num_layers: int = 6,
        batch_first: bool = False,
        post_norm: bool = True,
        return_intermediate: bool = True,
    ):
        activation = activation if activation is not None else nn.ReLU(inplace=True)
        super().__init__(embed_dim, num_heads, attn_dropout, feedforward_dim, ffn_dropout, activation,
                         operation_order, num_layers, batch_first, post_norm, return_intermediate,
                         ref_point_in=embed_dim, ref_point_out=2)

    def reference_points(self, query_pos: torch.Tensor) -> torch.Tensor:
        """(Q, B, C) query embeddings -> (Q, B, 2) normalized (x, y) reference points."""
        return self.ref_point_head(query_pos).sigmoid()

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
        **kwargs,
    ):
        """
        Args:
            query: (Q, B, C) initial content queries (zeros in Conditional-DETR).
            key, value: (HW, B, C) encoder memory; key_pos: (HW, B, C) its positional embedding.
            query_pos: (Q, B, C) the learned query embeddings.
            key_padding_mask: (B, HW) for the cross-attention (detrex passes None).

        Returns:
            hidden states [L, B, Q, C] (post-norm applied; L = num_layers, or 1 without
            ``return_intermediate``) and the reference points [B, Q, 2] shared by all layers.
        """
        if query_pos is None:
            raise ValueError("ConditionalDetrTransformerDecoder needs query_pos (the learned query embeddings)")
        c = self.embed_dim
        reference_points = self.reference_points(query_pos)  # (Q, B, 2)
        # (Q, B, C): C/2 channels per coordinate (detrex hard-codes 128, i.e. C = 256); y first, then x
        sine_embed = get_sine_pos_embed(reference_points, num_pos_feats=c // 2)
        intermediate = []
        for idx in range(self.num_layers):
            position_transform = 1 if idx == 0 else self.query_scale(query)
            query = self.run_layer(idx, query, key, value, query_pos, key_pos, sine_embed[..., :c] * position_transform,
                                   attn_masks, query_key_padding_mask, key_padding_mask, **kwargs)
            if self.return_intermediate:
                intermediate.append(self.normed(query))
        return self.stack_outputs(intermediate, query), reference_points.transpose(0, 1)


class ConditionalDetrTransformer(SingleScaleDetrTransformer):
    """Encoder + decoder of Conditional-DETR (`SingleScaleDetrTransformer` with a zero-target decoder).

    ``forward(x, mask, query_embed, pos_embed, **kwargs)``: x (B, C, H, W) projected features, mask (B, H, W)
    True = padding, query_embed (Q, C) learned query embeddings, pos_embed (B, C, H, W), kwargs extra encoder
    inputs (KS-DETR: a GT token mask in training). Subclasses (KS-DETR) may call `decode` several times on
    different memories: it depends only on its arguments.

    Returns:
        hidden states [L, B, Q, C] and reference points [B, Q, 2] (normalized x, y).
    """

    def decode(self, memory, mask, pos_embed, query_embed):
        """Memory (HW, B, C) -> (hidden states [L, B, Q, C], reference points [B, Q, 2]).

        As in detrex's Conditional-DETR, the cross-attention gets no key padding mask (``mask`` is unused
        here; it is accepted so subclasses can change that)."""
        target = torch.zeros_like(query_embed)
        return self.decoder(query=target, key=memory, value=memory, key_pos=pos_embed, query_pos=query_embed)
