"""Positional encodings for feature maps and box coordinates.

Follows DETR (Carion et al. 2020) and detrex: the sine embedding of a feature map is built from the
cumulative count of valid (non-padded) pixels along each axis, optionally normalized to [0, scale].
"""

import math

import torch
import torch.nn as nn

__all__ = ["PositionEmbeddingSine", "PositionEmbeddingLearned", "get_sine_pos_embed"]


def _sine_cosine(pos: torch.Tensor) -> torch.Tensor:
    """Interleave sin of even and cos of odd channels of the last dim: (..., F) -> (..., F)."""
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)


def _frequencies(num_pos_feats: int, temperature: float, device) -> torch.Tensor:
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)


class PositionEmbeddingSine(nn.Module):
    """Sine/cosine embedding of pixel positions.

    Args:
        num_pos_feats: channels per axis; the output has ``2 * num_pos_feats`` channels, y first then x.
        temperature: frequency base (DETR 10000; DAB-DETR uses 20).
        scale: the normalized coordinate range when ``normalize`` is True (default 2*pi).
        eps: added to the denominator of the normalization.
        offset: added to the cumulative count before normalization (Deformable-DETR uses -0.5).
        normalize: divide positions by the number of valid pixels of the row/column.
    """

    def __init__(
        self,
        num_pos_feats: int = 64,
        temperature: int = 10000,
        scale: float = 2 * math.pi,
        eps: float = 1e-6,
        offset: float = 0.0,
        normalize: bool = False,
    ):
        super().__init__()
        if normalize and not isinstance(scale, (int, float)):
            raise TypeError(f"PositionEmbeddingSine: scale must be a number when normalize=True, got {type(scale)}")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.eps = eps
        self.offset = offset

    def forward(self, mask: torch.Tensor, **kwargs) -> torch.Tensor:
        """mask: (B, H, W) bool, True on padding. Returns (B, 2 * num_pos_feats, H, W)."""
        if mask is None or mask.dim() != 3:
            raise ValueError("PositionEmbeddingSine expects a (B, H, W) padding mask")
        not_mask = ~mask.bool()
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + self.eps) * self.scale
            x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + self.eps) * self.scale
        dim_t = _frequencies(self.num_pos_feats, self.temperature, mask.device)
        pos_x = _sine_cosine(x_embed[..., None] / dim_t)
        pos_y = _sine_cosine(y_embed[..., None] / dim_t)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class PositionEmbeddingLearned(nn.Module):
    """Learned absolute embedding: one table for rows, one for columns.

    Args:
        num_pos_feats: channels per axis; the output has ``2 * num_pos_feats`` channels, x first then y.
        row_num_embed / col_num_embed: the largest feature-map height / width supported.
    """

    def __init__(self, num_pos_feats: int = 256, row_num_embed: int = 50, col_num_embed: int = 50):
        super().__init__()
        self.row_embed = nn.Embedding(row_num_embed, num_pos_feats)
        self.col_embed = nn.Embedding(col_num_embed, num_pos_feats)
        self.num_pos_feats = num_pos_feats
        self.row_num_embed = row_num_embed
        self.col_num_embed = col_num_embed
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, mask: torch.Tensor, **kwargs) -> torch.Tensor:
        """mask: (B, H, W). Returns (B, 2 * num_pos_feats, H, W)."""
        b, h, w = mask.shape
        if h > self.row_num_embed or w > self.col_num_embed:
            raise ValueError(
                f"PositionEmbeddingLearned: feature map {h}x{w} exceeds the table size "
                f"{self.row_num_embed}x{self.col_num_embed}; raise row_num_embed/col_num_embed"
            )
        x_emb = self.col_embed(torch.arange(w, device=mask.device))  # (W, F)
        y_emb = self.row_embed(torch.arange(h, device=mask.device))  # (H, F)
        pos = torch.cat([x_emb.unsqueeze(0).expand(h, w, -1), y_emb.unsqueeze(1).expand(h, w, -1)], dim=-1)
        return pos.permute(2, 0, 1).unsqueeze(0).expand(b, -1, -1, -1).contiguous()


def get_sine_pos_embed(
    pos_tensor: torch.Tensor,
    num_pos_feats: int = 128,
    temperature: int = 10000,
    exchange_xy: bool = True,
) -> torch.Tensor:
    """Sine embedding of each coordinate of `pos_tensor` (values in [0, 1], scaled by 2*pi).

    Args:
        pos_tensor: (..., n), e.g. normalized (cx, cy, w, h) boxes with n = 4.
        exchange_xy: swap the embeddings of the first two coordinates, so (x, y, ...) gives
            [pos(y), pos(x), ...] as in DAB-DETR.

    Returns:
        (..., n * num_pos_feats)
    """
    scale = 2 * math.pi
    dim_t = _frequencies(num_pos_feats, temperature, pos_tensor.device)
    embeds = [_sine_cosine(x * scale / dim_t) for x in pos_tensor.split(1, dim=-1)]
    if exchange_xy and len(embeds) >= 2:
        embeds[0], embeds[1] = embeds[1], embeds[0]
    return torch.cat(embeds, dim=-1)
