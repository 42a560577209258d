"""Ground-truth foreground/background token masks for KS-DETR (Zhao & Ukita 2023, "GT Fg-Bg Mask").

Pure functions, no module state. Conventions:

* boxes are **absolute xyxy in pixels of the augmented, unpadded image** (detectron2's ``gt_boxes.tensor``);
  images sit at the top-left of the padded batch canvas, so these coordinates index the canvas directly;
* ``padded_size`` is the batch tensor's ``(H, W)`` after padding;
* token masks are float ``{0, 1}`` tensors of shape ``(N, B)``, ``N = h * w`` flattened row-major
  (sequence-first, like the single-scale transformers' ``(N, B, C)`` tokens).

Two resize rules:

* ``rule="authors"`` (default, reproduces the released models): paint the boxes on a full-resolution
  canvas (coordinates truncated to int64, right/bottom edges exclusive, overlaps OR-ed), bilinearly resize it
  with ``align_corners=True`` to the feature map and keep cells ``> 0``. This is point sampling on a grid
  anchored at pixel 0 and pixel H-1; boxes smaller than about one stride can vanish.
* ``rule="cell_overlap"`` (behaviour change, opt-in): a token is foreground iff any canvas pixel of its stride
  cell lies inside a box (adaptive max pooling of the canvas), so every box marks at least one token.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["RULES", "boxes_to_canvas", "resize_canvas", "gt_token_mask", "gt_token_mask_multi_level"]

RULES = ("authors", "cell_overlap")


def boxes_to_canvas(
    boxes_xyxy: Sequence[torch.Tensor],
    padded_size: Tuple[int, int],
    image_sizes: Optional[Sequence[Tuple[int, int]]] = None,
    pad_fg_pixel: int = 0,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Paint each image's boxes on a (B, H, W) float canvas of zeros and ones.

    Args:
        boxes_xyxy: per image a float tensor [n_i, 4] of absolute x1, y1, x2, y2 pixels (n_i may be 0).
        padded_size: (H, W) of the padded batch.
        image_sizes: per image (h_i, w_i) of the unpadded image (Python ints); needed only when ``pad_fg_pixel > 0``.
        pad_fg_pixel: grow every box by this many pixels per side, clamped to the image (authors' option,
            0 in all released configs).
        device: canvas device; defaults to the first box tensor's device.
    Returns:
        (B, H, W) float tensor, 1 inside any box (rows y1..y2-1, columns x1..x2-1 after int64 truncation).

    All boxes of the batch are painted at once on the device, with no host read (a fixed number of operators
    whatever the box count): pixel (y, x) of image b is inside box k iff row y is in [y1_k, y2_k) and column x in
    [x1_k, x2_k), so the canvas is ``rows^T diag(image b's boxes) cols > 0`` (an exact count of covering boxes).
    """
    H, W = int(padded_size[0]), int(padded_size[1])
    if device is None:
        device = boxes_xyxy[0].device if len(boxes_xyxy) > 0 else torch.device("cpu")
    if pad_fg_pixel > 0 and image_sizes is None:
        raise ValueError("boxes_to_canvas: pad_fg_pixel > 0 needs image_sizes to clamp the grown boxes.")
    for i, boxes in enumerate(boxes_xyxy):
        if boxes.numel() and (boxes.dim() != 2 or boxes.shape[-1] != 4):
            raise ValueError(f"boxes_to_canvas: image {i} has boxes of shape {tuple(boxes.shape)}; expected [n, 4] xyxy.")
    counts = [int(boxes.shape[0]) if boxes.numel() else 0 for boxes in boxes_xyxy]
    if sum(counts) == 0:
        return torch.zeros((len(boxes_xyxy), H, W), dtype=torch.float32, device=device)
    present = [boxes.reshape(-1, 4) for boxes, n in zip(boxes_xyxy, counts) if n]
    b = torch.cat(present).detach().to(device=device, dtype=torch.int64)  # truncation toward zero, as the authors do
    if pad_fg_pixel > 0:
        limits = [(w, h, w, h) for (h, w), n in zip(image_sizes, counts) for _ in range(n)]
        grow = torch.tensor([-pad_fg_pixel, -pad_fg_pixel, pad_fg_pixel, pad_fg_pixel], device=device)
        b = torch.minimum((b + grow).clamp(min=0), torch.tensor(limits, dtype=torch.int64, device=device))
    rows = torch.arange(H, device=device)
    cols = torch.arange(W, device=device)
    # negative starts mean "from 0" and negative ends "empty", as the authors' max(., 0) slicing
    in_rows = ((rows >= b[:, 1:2]) & (rows < b[:, 3:4])).float()  # (K, H)
    in_cols = ((cols >= b[:, 0:1]) & (cols < b[:, 2:3])).float()  # (K, W)
    owner = torch.cat([torch.full((n,), i, device=device) for i, n in enumerate(counts) if n])
    per_image = (owner == torch.arange(len(counts), device=device)[:, None]).float()  # (B, K)
    covered = torch.einsum("kh,bk,kw->bhw", in_rows, per_image, in_cols)
    return (covered > 0).float()


def resize_canvas(canvas: torch.Tensor, feat_size: Tuple[int, int], rule: str = "authors") -> torch.Tensor:
    """Resize a (B, H, W) canvas to a feature map (h, w); return the (N = h*w, B) float {0,1} token mask."""
    if rule not in RULES:
        raise ValueError(f"gt_mask: unknown rule {rule!r}; choose one of {RULES}.")
    h, w = int(feat_size[0]), int(feat_size[1])
    x = canvas[None].float()  # images act as channels: (1, B, H, W)
    if rule == "authors":
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)
    else:
        x = F.adaptive_max_pool2d(x, (h, w))
    fg = (x[0] > 0).float()  # (B, h, w)
    return fg.flatten(1).transpose(0, 1).contiguous()


def gt_token_mask(
    boxes_xyxy: Sequence[torch.Tensor],
    padded_size: Tuple[int, int],
    feat_size: Tuple[int, int],
    rule: str = "authors",
    image_sizes: Optional[Sequence[Tuple[int, int]]] = None,
    pad_fg_pixel: int = 0,
) -> torch.Tensor:
    """Single-scale token mask (N = h*w, B) from per-image absolute xyxy boxes. See the module docstring."""
    canvas = boxes_to_canvas(boxes_xyxy, padded_size, image_sizes, pad_fg_pixel)
    return resize_canvas(canvas, feat_size, rule)


def gt_token_mask_multi_level(
    boxes_xyxy: Sequence[torch.Tensor],
    padded_size: Tuple[int, int],
    feat_sizes: Sequence[Tuple[int, int]],
    rule: str = "authors",
    image_sizes: Optional[Sequence[Tuple[int, int]]] = None,
    pad_fg_pixel: int = 0,
) -> torch.Tensor:
    """Multi-level token mask (sum_l h_l*w_l, B): each level resized independently from the same
    full-resolution canvas, concatenated in level order (matches a level-major, row-major token flatten)."""
    canvas = boxes_to_canvas(boxes_xyxy, padded_size, image_sizes, pad_fg_pixel)
    return torch.cat([resize_canvas(canvas, s, rule) for s in feat_sizes], dim=0)
