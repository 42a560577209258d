"""Skeletons shared by the DETR-family transformers of the projects.

- `DetrEncoder`: a stack of encoder layers run in sequence, each with the positional embedding as its query
  position (DETR, Carion et al. 2020; Conditional-DETR; Deformable-DETR), or a per-layer transform of it
  (`layer_position`; DAB-DETR rescales it by an MLP of the layer input), then an optional final LayerNorm.
- `SingleScaleDetrTransformer`: the sequence-first encoder + decoder wrapper of the single-scale DETRs
  (Conditional-DETR, Meng et al. 2021; DAB-DETR, Liu et al. 2022): flatten the (B, C, H, W) inputs, encode,
  decode the queries; subclasses define `decode`.
- `ConditionalDecoder`: the decoder skeleton Conditional-DETR and DAB-DETR share (layers, ``query_scale``,
  ``ref_point_head``, shared post-norm, one layer call); each subclass writes its own loop of reference points.
- `post_norm_encoder_layer` / `conditional_decoder_layer`: the single-scale encoder and decoder layers.
"""

from typing import Tuple

import torch
import torch.nn as nn

from .attention import ConditionalCrossAttention, ConditionalSelfAttention, MultiheadAttention
from .mlp import FFN, MLP
from .transformer import BaseTransformerLayer, TransformerLayerSequence

__all__ = [
    "ConditionalDecoder",
    "DetrEncoder",
    "SingleScaleDetrTransformer",
    "conditional_decoder_layer",
    "post_norm_encoder_layer",
]


def post_norm_encoder_layer(embed_dim: int, num_heads: int, attn_dropout: float, feedforward_dim: int,
                            ffn_dropout: float, activation: nn.Module, operation_order: Tuple[str, ...],
                            batch_first: bool) -> BaseTransformerLayer:
    """DETR's encoder layer: ``MultiheadAttention`` self-attention, FFN (``activation`` between its two
    Linears) and LayerNorm, in ``operation_order`` (post-norm: ``("self_attn", "norm", "ffn", "norm")``)."""
    return BaseTransformerLayer(
        attn=MultiheadAttention(embed_dim, num_heads, attn_drop=attn_dropout, batch_first=batch_first),
        ffn=FFN(embed_dim=embed_dim, feedforward_dim=feedforward_dim, ffn_drop=ffn_dropout, activation=activation),
        norm=nn.LayerNorm(embed_dim),
        operation_order=operation_order,
        batch_first=batch_first,
    )


def conditional_decoder_layer(embed_dim: int, num_heads: int, attn_dropout: float, feedforward_dim: int,
                              ffn_dropout: float, activation: nn.Module,
                              operation_order: Tuple[str, ...]) -> BaseTransformerLayer:
    """Conditional-DETR's decoder layer (also DAB-DETR's, Liu et al. 2022), sequence-first: conditional
    self-attention, conditional cross-attention (spatial query concatenated per head), FFN and LayerNorm, in
    ``operation_order`` (``("self_attn", "norm", "cross_attn", "norm", "ffn", "norm")``)."""
    return BaseTransformerLayer(
        attn=[
            ConditionalSelfAttention(embed_dim, num_heads, attn_drop=attn_dropout),
            ConditionalCrossAttention(embed_dim, num_heads, attn_drop=attn_dropout),
        ],
        ffn=FFN(embed_dim=embed_dim, feedforward_dim=feedforward_dim, ffn_drop=ffn_dropout, activation=activation),
        norm=nn.LayerNorm(embed_dim),
        operation_order=operation_order,
    )


class DetrEncoder(TransformerLayerSequence):
    """Encoder layers applied in order; the subclass sets ``post_norm_layer`` (a LayerNorm or None)."""

    def layer_position(self, query, query_pos):
        """Positional embedding of the layer whose input is ``query`` (default: ``query_pos`` itself)."""
        return query_pos

    def forward(
        self,
        query,
        key=None,
        value=None,
        query_pos=None,
        key_pos=None,
        attn_masks=None,
        query_key_padding_mask=None,
        key_padding_mask=None,
        **kwargs,
    ):
        """query: tokens (N, B, C) or (B, N, C) as the layers expect; query_pos: the same shape;
        query_key_padding_mask: (B, N) True = pad. Extra keyword arguments go to every layer (e.g. the
        deformable geometry, or a KS layer's token mask). Returns the memory, shaped as ``query``."""
        for layer in self.layers:
            query = layer(
                query,
                key,
                value,
                query_pos=self.layer_position(query, query_pos),
                attn_masks=attn_masks,
                query_key_padding_mask=query_key_padding_mask,
                key_padding_mask=key_padding_mask,
                **kwargs,
            )
        if self.post_norm_layer is not None:
            query = self.post_norm_layer(query)
        return query


class ConditionalDecoder(TransformerLayerSequence):
    """Decoder skeleton of Conditional-DETR (Meng et al. 2021) and DAB-DETR (Liu et al. 2022), sequence-first.

    Holds ``num_layers`` `conditional_decoder_layer` copies (the cross-attention's ``query_pos_proj`` kept only
    in layer 0, as in both papers' code), ``query_scale`` = MLP(C, C, C, 2) (the content-dependent transform of
    the spatial query in layers 1..), ``ref_point_head`` = MLP(``ref_point_in``, C, ``ref_point_out``, 2) (the
    reference point / box embedding), with ``modulate_hw_attn`` DAB-DETR's ``ref_anchor_head`` = MLP(C, C, 2, 2),
    and the ``post_norm_layer`` shared by all layers' outputs (modules registered in the order of the released
    checkpoints). Subclasses write ``forward``: where the reference points come from, and how the spatial query
    is made of them; `run_layer`, `normed` and `stack_outputs` are the parts they share.
    """

    def __init__(self, embed_dim: int, num_heads: int, attn_dropout: float, feedforward_dim: int, ffn_dropout: float,
                 activation: nn.Module, operation_order: Tuple[str, ...], num_layers: int, batch_first: bool,
                 post_norm: bool, return_intermediate: bool, ref_point_in: int, ref_point_out: int,
                 modulate_hw_attn: bool = False):
        if batch_first:
            raise NotImplementedError(f"{type(self).__name__} works sequence-first (batch_first=False)")
        layer = conditional_decoder_layer(embed_dim, num_heads, attn_dropout, feedforward_dim, ffn_dropout,
                                          activation, operation_order)
        super().__init__(transformer_layers=layer, num_layers=num_layers)
        self.return_intermediate = return_intermediate
        self.embed_dim = embed_dim
        self.query_scale = MLP(embed_dim, embed_dim, embed_dim, 2)
        self.ref_point_head = MLP(ref_point_in, embed_dim, ref_point_out, 2)
        self.modulate_hw_attn = modulate_hw_attn
        if modulate_hw_attn:  # DAB-DETR: the content predicts (w, h) factors that modulate the spatial query
            self.ref_anchor_head = MLP(embed_dim, embed_dim, 2, 2)
        self.post_norm_layer = nn.LayerNorm(embed_dim) if post_norm else None
        for layer in self.layers[1:]:
            layer.attentions[1].query_pos_proj = None

    def run_layer(self, idx: int, query, key, value, query_pos, key_pos, query_sine_embed, attn_masks=None,
                  query_key_padding_mask=None, key_padding_mask=None, **kwargs):
        """Layer ``idx`` on queries (Q, B, C) against memory (HW, B, C); ``query_sine_embed`` (Q, B, C) is the
        cross-attention's spatial query, ``query_pos`` (Q, B, C) the self-attention's positional query."""
        return self.layers[idx](
            query,
            key,
            value,
            query_pos=query_pos,
            key_pos=key_pos,
            query_sine_embed=query_sine_embed,
            attn_masks=attn_masks,
            query_key_padding_mask=query_key_padding_mask,
            key_padding_mask=key_padding_mask,
            is_first_layer=(idx == 0),
            **kwargs,
        )

    def normed(self, query):
        """The shared post-norm (identity without one)."""
        return self.post_norm_layer(query) if self.post_norm_layer is not None else query

    def stack_outputs(self, intermediate, query):
        """[L x (Q, B, C)] per-layer outputs (already normed) and the last layer's raw output -> [L, B, Q, C];
        without ``return_intermediate``, L = 1 (the normed last output)."""
        if not self.return_intermediate:
            intermediate = [self.normed(query)]
        return torch.stack(intermediate).transpose(1, 2)


class SingleScaleDetrTransformer(nn.Module):
    """Encoder + decoder of a single-scale DETR, sequence-first.

    ``forward(x, mask, queries, pos_embed, **kwargs)`` flattens the inputs (`flatten_inputs`), runs `encode`
    (kwargs go to the encoder and its layers) and ``decode(memory, mask, pos_embed, queries)``. Subclasses
    (KS-DETR) may call `decode` several times on different memories: it depends only on its arguments.
    """

    def __init__(self, encoder: nn.Module = None, decoder: nn.Module = None):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.embed_dim = self.encoder.embed_dim
        self.init_weights()

    def init_weights(self):
        """Xavier-uniform for every parameter with more than one dimension (detrex)."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    @staticmethod
    def flatten_inputs(x, mask, queries, pos_embed):
        """(B, C, H, W) features/pos -> (HW, B, C); (B, H, W) mask -> (B, HW); (Q, D) queries -> (Q, B, D)."""
        bs, c, h, w = x.shape
        x = x.view(bs, c, -1).permute(2, 0, 1)
        pos_embed = pos_embed.view(bs, c, -1).permute(2, 0, 1)
        queries = queries.unsqueeze(1).repeat(1, bs, 1)
        mask = mask.view(bs, -1)
        return x, mask, queries, pos_embed

    def encode(self, x, mask, pos_embed, **kwargs):
        """Tokens (HW, B, C), mask (B, HW), pos (HW, B, C) -> memory (HW, B, C)."""
        return self.encoder(query=x, key=None, value=None, query_pos=pos_embed, query_key_padding_mask=mask, **kwargs)

    def decode(self, memory, mask, pos_embed, queries):
        """Memory (HW, B, C) -> the decoder's outputs. Implemented by each transformer."""
        raise NotImplementedError

    def forward(self, x, mask, queries, pos_embed, **kwargs):
        """
        Args:
            x: (B, C, H, W) projected features; mask: (B, H, W) True = padding;
            queries: (Q, D) learned queries; pos_embed: (B, C, H, W).
            **kwargs: extra encoder inputs (KS-DETR: a GT token mask in training).
        """
        x, mask, queries, pos_embed = self.flatten_inputs(x, mask, queries, pos_embed)
        memory = self.encode(x, mask, pos_embed, **kwargs)
        return self.decode(memory, mask, pos_embed, queries)
