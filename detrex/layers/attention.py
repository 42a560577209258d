"""Attention modules with an identity (residual) connection and positional inputs.

All modules take ``(query, key, value, identity, query_pos, key_pos, attn_mask, key_padding_mask)`` and
return ``identity + proj_drop(attention_output)``. Tensors are sequence-first ``(N, B, C)`` unless
``batch_first=True`` (then ``(B, N, C)``). Masks: ``attn_mask`` (Nq, Nk) bool (True = blocked) or float
(added); ``key_padding_mask`` (B, Nk) bool, True = padded key.
"""

import warnings
from typing import Optional

import torch
import torch.nn as nn

__all__ = ["MultiheadAttention", "ConditionalSelfAttention", "ConditionalCrossAttention"]


def _defaults(query, key, value, identity, query_pos, key_pos, owner):
    """Fill unset inputs the detrex way: key <- query, value <- key, identity <- query and
    key_pos <- query_pos when their shapes agree."""
    key = query if key is None else key
    value = key if value is None else value
    identity = query if identity is None else identity
    if key_pos is None and query_pos is not None:
        if query_pos.shape == key.shape:
            key_pos = query_pos
        else:
            warnings.warn(f"position encoding of key is missing in {owner}.")
    return key, value, identity, key_pos


def _masked_softmax(attn: torch.Tensor, attn_mask, key_padding_mask) -> torch.Tensor:
    """attn: (B, heads, Nq, Nk) logits; masks as in the module docstring."""
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attn = attn.masked_fill(attn_mask, float("-inf"))
        else:
            attn = attn + attn_mask
    if key_padding_mask is not None:
        attn = attn.masked_fill(key_padding_mask[:, None, None, :].bool(), float("-inf"))
    return attn.softmax(dim=-1)


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(N, B, C) -> (B, heads, N, C // heads)."""
    n, b, c = x.shape
    return x.reshape(n, b, num_heads, c // num_heads).permute(1, 2, 0, 3)


class MultiheadAttention(nn.Module):
    """`torch.nn.MultiheadAttention` (as submodule ``attn``) with residual and positional embeddings.

    ``query + query_pos`` and ``key + key_pos`` feed the projections; ``value`` is used as given.

    Args:
        embed_dim, num_heads: as in `nn.MultiheadAttention`.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout on the output before the residual.
        batch_first: (B, N, C) inputs instead of (N, B, C).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        batch_first: bool = False,
        **kwargs,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.batch_first = batch_first
        self.attn = nn.MultiheadAttention(
            embed_dim=embed_dim, num_heads=num_heads, dropout=attn_drop, batch_first=batch_first, **kwargs
        )
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self,
        query: torch.Tensor,
        key: Optional[torch.Tensor] = None,
        value: Optional[torch.Tensor] = None,
        identity: Optional[torch.Tensor] = None,
        query_pos: Optional[torch.Tensor] = None,
        key_pos: Optional[torch.Tensor] = None,
        attn_mask: Optional[torch.Tensor] = None,
        key_padding_mask: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> torch.Tensor:
        """Extra keyword arguments (e.g. for other attention types in the same layer) are ignored."""
        key, value, identity, key_pos = _defaults(query, key, value, identity, query_pos, key_pos, type(self).__name__)
        if query_pos is not None:
            query = query + query_pos
        if key_pos is not None:
            key = key + key_pos
        out = self.attn(query=query, key=key, value=value, attn_mask=attn_mask, key_padding_mask=key_padding_mask)[0]
        return identity + self.proj_drop(out)


class ConditionalSelfAttention(nn.Module):
    """Decoder self-attention of Conditional DETR (Meng et al. 2021) as used by DAB-DETR.

    ``q = Wqc(query) + Wqp(query_pos)``, ``k = Wkc(key) + Wkp(key_pos)``, ``v = Wv(value)``; standard
    multi-head attention on these, then ``out_proj``. Submodules: ``query_content_proj``,
    ``query_pos_proj``, ``key_content_proj``, ``key_pos_proj``, ``value_proj``, ``out_proj``.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        batch_first: bool = False,
        **kwargs,
    ):
        super().__init__()
        self.query_content_proj = nn.Linear(embed_dim, embed_dim)
        self.query_pos_proj = nn.Linear(embed_dim, embed_dim)
        self.key_content_proj = nn.Linear(embed_dim, embed_dim)
        self.key_pos_proj = nn.Linear(embed_dim, embed_dim)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)
        self.num_heads = num_heads
        self.embed_dim = embed_dim
        self.scale = (embed_dim // num_heads) ** -0.5
        self.batch_first = batch_first

    def forward(
        self,
        query,
        key=None,
        value=None,
        identity=None,
        query_pos=None,
        key_pos=None,
        attn_mask=None,
        key_padding_mask=None,
        **kwargs,
    ):
        key, value, identity, key_pos = _defaults(query, key, value, identity, query_pos, key_pos, type(self).__name__)
        if query_pos is None or key_pos is None:
            raise ValueError("ConditionalSelfAttention needs query_pos and key_pos")
        if self.batch_first:
            query, key, value, query_pos, key_pos, identity = (
                t.transpose(0, 1) for t in (query, key, value, query_pos, key_pos, identity)
            )
        n, b, c = query.shape
        q = self.query_content_proj(query) + self.query_pos_proj(query_pos)
        k = self.key_content_proj(key) + self.key_pos_proj(key_pos)
        v = self.value_proj(value)
        q, k, v = (_split_heads(t, self.num_heads) for t in (q, k, v))
        attn = _masked_softmax((q * self.scale) @ k.transpose(-2, -1), attn_mask, key_padding_mask)
        out = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(b, n, c)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        else:
            identity = identity.transpose(0, 1)
        return identity + self.proj_drop(out)


class ConditionalCrossAttention(nn.Module):
    """Decoder cross-attention of Conditional DETR / DAB-DETR.

    Each head attends with concatenated ``[content, spatial]`` queries and keys (head dim 2*C/heads):
    query = ``[Wqc(query) (+ Wqp(query_pos) in the first layer), Wqs(query_sine_embed)]``, key =
    ``[Wkc(key) (+ Wkp(key_pos) in the first layer), Wkp(key_pos)]``, value = ``Wv(value)``.

    Args:
        keep_query_pos: add the projected ``query_pos`` in every layer, not only when
            ``is_first_layer`` is True. Decoders that do not keep it delete ``query_pos_proj`` (set it to
            None) in all but the first layer, so those checkpoints have no such key there.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        batch_first: bool = False,
        keep_query_pos: bool = False,
        **kwargs,
    ):
        super().__init__()
        self.query_content_proj = nn.Linear(embed_dim, embed_dim)
        self.query_pos_proj = nn.Linear(embed_dim, embed_dim)
        self.query_pos_sine_proj = nn.Linear(embed_dim, embed_dim)
        self.key_content_proj = nn.Linear(embed_dim, embed_dim)
        self.key_pos_proj = nn.Linear(embed_dim, embed_dim)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)
        self.num_heads = num_heads
        self.embed_dim = embed_dim
        self.batch_first = batch_first
        self.keep_query_pos = keep_query_pos

    def forward(
        self,
        query,
        key=None,
        value=None,
        identity=None,
        query_pos=None,
        key_pos=None,
        query_sine_embed=None,
        is_first_layer=False,
        attn_mask=None,
        key_padding_mask=None,
        **kwargs,
    ):
        """query_sine_embed: (Nq, B, C) (batch-first: (B, Nq, C)), the sine embedding of the query's
        reference box (already scaled by the decoder)."""
        key, value, identity, key_pos = _defaults(query, key, value, identity, query_pos, key_pos, type(self).__name__)
        if query_pos is None or key_pos is None or query_sine_embed is None:
            raise ValueError("ConditionalCrossAttention needs query_pos, key_pos and query_sine_embed")
        if self.batch_first:
            query, key, value, query_pos, key_pos, identity, query_sine_embed = (
                t.transpose(0, 1) for t in (query, key, value, query_pos, key_pos, identity, query_sine_embed)
            )
        n, b, c = query.shape
        hw = key.shape[0]
        heads = self.num_heads
        q = self.query_content_proj(query)
        k = self.key_content_proj(key)
        v = self.value_proj(value)
        key_pos = self.key_pos_proj(key_pos)
        if is_first_layer or self.keep_query_pos:
            if self.query_pos_proj is None:
                raise RuntimeError("ConditionalCrossAttention: query_pos_proj was removed from this layer")
            q = q + self.query_pos_proj(query_pos)
            k = k + key_pos
        sine = self.query_pos_sine_proj(query_sine_embed)
        q = torch.cat([q.view(n, b, heads, c // heads), sine.view(n, b, heads, c // heads)], dim=3)
        k = torch.cat([k.view(hw, b, heads, c // heads), key_pos.view(hw, b, heads, c // heads)], dim=3)
        q = q.permute(1, 2, 0, 3)  # (B, heads, Nq, 2C/heads)
        k = k.permute(1, 2, 0, 3)
        v = _split_heads(v, heads)
        scale = (2 * c // heads) ** -0.5
        attn = _masked_softmax((q * scale) @ k.transpose(-2, -1), attn_mask, key_padding_mask)
        out = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(b, n, c)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        else:
            identity = identity.transpose(0, 1)
        return identity + self.proj_drop(out)
