"""sMLP: fuse the ground-truth foreground mask into encoder tokens (KS-DETR, Zhao & Ukita 2023, §3 of the spec).

``x_t = m * ReLU(W x + b) + (1 - m) * x`` with ``m = foreground AND not padding``: foreground tokens are
replaced by a learned projection, background and padded tokens pass through unchanged.

Parameter names follow the authors' checkpoints: in the detector the module lives at
``ksgt.smlp_module`` and its weights at ``ksgt.smlp_module.token_split_conv.linear.0.{weight,bias}``.
Linear layers keep PyTorch's default init (the transformer's xavier re-init does not reach ``ksgt``).
"""
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from .gt_mask import RULES, gt_token_mask

__all__ = ["TokenSplit", "sMLP", "KSGT"]


class TokenSplit(nn.Module):
    """``linear = Sequential(Linear(C, C), ReLU)``: the projection applied to foreground tokens."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.linear = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class sMLP(nn.Module):  # noqa: N801 - the authors' name
    """Masked token MLP.

    forward(x, fg_mask, padding_mask):
        x: (N, B, C) tokens (sequence-first), without positional embedding.
        fg_mask: (N, B) {0,1} or bool, 1 = token inside a GT box.
        padding_mask: (B, N) bool, True = padded token, or None.
    Returns (N, B, C): ReLU(Linear(x)) where fg AND valid, x elsewhere (exactly, bit for bit).
    """

    def __init__(self, embed_dim: int = 256):
        super().__init__()
        self.token_split_conv = TokenSplit(embed_dim)

    def forward(self, x: torch.Tensor, fg_mask: torch.Tensor, padding_mask: Optional[torch.Tensor] = None):
        if fg_mask.shape != x.shape[:2]:
            raise ValueError(
                f"sMLP: fg_mask has shape {tuple(fg_mask.shape)} but tokens are {tuple(x.shape)}; "
                "expected (N, B) matching the (N, B, C) tokens."
            )
        m = fg_mask.bool()
        if padding_mask is not None:
            m = m & ~padding_mask.bool().transpose(0, 1)
        return torch.where(m.unsqueeze(-1), self.token_split_conv(x), x)


class KSGT(nn.Module):
    """Holder of the GT-mask settings and the sMLP (the detector's ``ksgt`` submodule).

    Its only parameters are the sMLP's. It stores no per-batch state: ``token_mask`` computes the mask from
    the targets passed in, and ``forward`` fuses a given mask into given tokens.

    Args:
        embed_dim: token width C.
        mask_rule: ``"authors"`` (bilinear align_corners point sampling, the released models) or
            ``"cell_overlap"`` (any pixel of the stride cell inside a box); see ``gt_mask``.
        pad_fg_pixel: grow boxes by this many pixels per side before resizing (0 in the released configs).
    """

    def __init__(self, embed_dim: int = 256, mask_rule: str = "authors", pad_fg_pixel: int = 0):
        super().__init__()
        if mask_rule not in RULES:
            raise ValueError(f"KSGT: mask_rule={mask_rule!r} is not one of {RULES}.")
        self.mask_rule = mask_rule
        self.pad_fg_pixel = int(pad_fg_pixel)
        self.smlp_module = sMLP(embed_dim)

    def token_mask(
        self,
        boxes_xyxy: Sequence[torch.Tensor],
        padded_size: Tuple[int, int],
        feat_size: Tuple[int, int],
        image_sizes: Optional[Sequence[Tuple[int, int]]] = None,
    ) -> torch.Tensor:
        """(N = h*w, B) float token mask for one feature map; boxes are absolute xyxy pixels per image."""
        return gt_token_mask(boxes_xyxy, padded_size, feat_size, self.mask_rule, image_sizes, self.pad_fg_pixel)

    def forward(self, x: torch.Tensor, fg_mask: torch.Tensor, padding_mask: Optional[torch.Tensor] = None):
        """X^t = sMLP(x, fg_mask); shapes as in :class:`sMLP`."""
        return self.smlp_module(x, fg_mask, padding_mask)

    def extra_repr(self) -> str:
        return f"mask_rule={self.mask_rule!r}, pad_fg_pixel={self.pad_fg_pixel}"
