"""Generic transformer layer and layer stack, configured by an ``operation_order`` (as in detrex/mmcv).

A layer runs the operations named in ``operation_order`` -- ``"self_attn"``, ``"cross_attn"``, ``"norm"``,
``"ffn"`` -- in order. Post-norm (DETR) is ``("self_attn", "norm", "ffn", "norm")``; an order starting
with ``"norm"`` is pre-norm, in which case residuals skip the norms. State-dict names:
``attentions.{i}``, ``ffns.{i}``, ``norms.{i}``, numbered in order of appearance.

Layers are `CheckpointableLayer` s: ``detrex.layers.set_activation_checkpoint(model)`` makes every layer of
every sequence recompute its activations in backward (``train.activation_checkpoint=True``).
"""

import copy
import warnings
from typing import List, Sequence, Union

import torch
import torch.nn as nn

from .activation_checkpoint import CheckpointableLayer

__all__ = ["BaseTransformerLayer", "TransformerLayerSequence"]

_OPERATIONS = {"self_attn", "norm", "cross_attn", "ffn"}


class BaseTransformerLayer(CheckpointableLayer, nn.Module):
    """One transformer layer built from given attention, FFN and norm modules.

    Args:
        attn: one module (deep-copied for every attention in ``operation_order``) or a list with one
            module per attention, in order.
        ffn: FFN module, deep-copied for every ``"ffn"``.
        norm: normalization module, deep-copied for every ``"norm"``.
        operation_order: tuple of operation names.
        batch_first: informational; the attention modules decide the layout.
    """

    def __init__(
        self,
        attn: Union[nn.Module, List[nn.Module]],
        ffn: nn.Module,
        norm: nn.Module,
        operation_order: Sequence[str] = None,
        batch_first: bool = False,
    ):
        super().__init__()
        if operation_order is None:
            raise ValueError(
                "BaseTransformerLayer: operation_order is required, e.g. ('self_attn', 'norm', 'ffn', 'norm')"
            )
        operation_order = tuple(operation_order)
        unknown = set(operation_order) - _OPERATIONS
        if unknown:
            raise ValueError(
                f"BaseTransformerLayer: unknown operations {sorted(unknown)}; allowed: {sorted(_OPERATIONS)}"
            )
        num_attn = operation_order.count("self_attn") + operation_order.count("cross_attn")
        if isinstance(attn, nn.Module):
            attn = [copy.deepcopy(attn) for _ in range(num_attn)]
        else:
            attn = list(attn)
            if len(attn) != num_attn:
                raise ValueError(
                    f"BaseTransformerLayer: {len(attn)} attention modules given but operation_order "
                    f"{operation_order} has {num_attn} attentions"
                )
        self.num_attn = num_attn
        self.operation_order = operation_order
        self.batch_first = batch_first
        self.pre_norm = operation_order[0] == "norm"
        self.attentions = nn.ModuleList(attn)
        self.embed_dim = self.attentions[0].embed_dim
        self.ffns = nn.ModuleList(copy.deepcopy(ffn) for _ in range(operation_order.count("ffn")))
        self.norms = nn.ModuleList(copy.deepcopy(norm) for _ in range(operation_order.count("norm")))

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor = None,
        value: torch.Tensor = None,
        query_pos: torch.Tensor = None,
        key_pos: torch.Tensor = None,
        attn_masks: List[torch.Tensor] = None,
        query_key_padding_mask: torch.Tensor = None,
        key_padding_mask: torch.Tensor = None,
        **kwargs,
    ) -> torch.Tensor:
        """Run the layer.

        Args:
            query: (Nq, B, C) (or batch-first, per the attention modules).
            key, value: the cross-attention memory; self-attention uses the current query.
            query_pos, key_pos: positional embeddings; self-attention uses query_pos for both.
            attn_masks: one mask per attention (or one tensor reused for all).
            query_key_padding_mask: (B, Nq) padding mask for self-attention keys.
            key_padding_mask: (B, Nk) padding mask for cross-attention keys.
            **kwargs: passed to every attention module (e.g. ``query_sine_embed``, ``is_first_layer``).
        """
        norm_index = attn_index = ffn_index = 0
        identity = query
        if attn_masks is None:
            attn_masks = [None] * self.num_attn
        elif isinstance(attn_masks, torch.Tensor):
            attn_masks = [attn_masks] * self.num_attn
            warnings.warn(f"Use same attn_mask in all attentions in {type(self).__name__}")
        elif len(attn_masks) != self.num_attn:
            raise ValueError(f"attn_masks has {len(attn_masks)} entries, expected {self.num_attn}")

        for op in self.operation_order:
            if op == "self_attn":
                query = self.attentions[attn_index](
                    query,
                    query,
                    query,
                    identity if self.pre_norm else None,
                    query_pos=query_pos,
                    key_pos=query_pos,
                    attn_mask=attn_masks[attn_index],
                    key_padding_mask=query_key_padding_mask,
                    **kwargs,
                )
                attn_index += 1
                identity = query
            elif op == "norm":
                query = self.norms[norm_index](query)
                norm_index += 1
            elif op == "cross_attn":
                query = self.attentions[attn_index](
                    query,
                    key,
                    value,
                    identity if self.pre_norm else None,
                    query_pos=query_pos,
                    key_pos=key_pos,
                    attn_mask=attn_masks[attn_index],
                    key_padding_mask=key_padding_mask,
                    **kwargs,
                )
                attn_index += 1
                identity = query
            elif op == "ffn":
                query = self.ffns[ffn_index](query, identity if self.pre_norm else None)
                ffn_index += 1
        return query


class TransformerLayerSequence(nn.Module):
    """A stack of transformer layers stored as ``layers`` (nn.ModuleList).

    Args:
        transformer_layers: one layer (deep-copied ``num_layers`` times) or a list of layers.
        num_layers: number of layers (defaults to the list length).

    Subclasses implement ``forward``. ``use_checkpoint`` (set by `set_activation_checkpoint`, which also sets
    it on every layer) records whether the layers are checkpointed.
    """

    use_checkpoint = False

    def __init__(self, transformer_layers: Union[nn.Module, List[nn.Module]] = None, num_layers: int = None):
        super().__init__()
        if isinstance(transformer_layers, nn.Module):
            if num_layers is None:
                raise ValueError("TransformerLayerSequence: num_layers is required when one layer is given")
            layers = [copy.deepcopy(transformer_layers) for _ in range(num_layers)]
        else:
            layers = list(transformer_layers)
            if num_layers is not None and len(layers) != num_layers:
                raise ValueError(f"TransformerLayerSequence: got {len(layers)} layers but num_layers={num_layers}")
        self.num_layers = len(layers)
        self.layers = nn.ModuleList(layers)

    def forward(self, *args, **kwargs):
        raise NotImplementedError("Subclasses of TransformerLayerSequence implement forward()")
