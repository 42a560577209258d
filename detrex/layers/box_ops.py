"""Box utilities for DETR-style models.

Conventions: ``cxcywh`` = (center x, center y, width, height), ``xyxy`` = (x0, y0, x1, y1). The functions
work for normalized ([0, 1]) and absolute coordinates alike; DETR losses use normalized cxcywh.
"""

from typing import Tuple

import torch

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_area",
    "box_iou",
    "generalized_box_iou",
    "paired_generalized_box_iou",
    "inverse_sigmoid",
]


def box_cxcywh_to_xyxy(bbox: torch.Tensor) -> torch.Tensor:
    """(..., 4) cxcywh -> (..., 4) xyxy (``c -/+ 0.5 * wh``; four operators whatever the shape)."""
    center, half = bbox[..., :2], 0.5 * bbox[..., 2:]
    return torch.cat([center - half, center + half], dim=-1)


def box_xyxy_to_cxcywh(bbox: torch.Tensor) -> torch.Tensor:
    """(..., 4) xyxy -> (..., 4) cxcywh (``(lo + hi) / 2``, ``hi - lo``; four operators whatever the shape)."""
    lo, hi = bbox[..., :2], bbox[..., 2:]
    return torch.cat([(lo + hi) / 2, hi - lo], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 4) xyxy -> (N,) areas."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes.

    Returns:
        iou (N, M) and union (N, M).
    """
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return inter / union, union


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise generalized IoU (Rezatofighi et al. 2019) of (N, 4) and (M, 4) xyxy boxes -> (N, M).

    Boxes must be well formed (x1 >= x0, y1 >= y0); degenerate boxes give inf/nan results.
    """
    iou, union = box_iou(boxes1, boxes2)
    lt = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing


def paired_generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Generalized IoU of matched pairs: (..., 4) and (..., 4) xyxy boxes -> (...,); equals the diagonal of
    `generalized_box_iou` (same arithmetic) without building the (N, N) matrix."""
    area1 = (boxes1[..., 2:] - boxes1[..., :2]).prod(-1)
    area2 = (boxes2[..., 2:] - boxes2[..., :2]).prod(-1)
    lo, hi = boxes1[..., :2], boxes1[..., 2:]
    inter = (torch.min(hi, boxes2[..., 2:]) - torch.max(lo, boxes2[..., :2])).clamp(min=0).prod(-1)
    union = area1 + area2 - inter
    enclosing = (torch.max(hi, boxes2[..., 2:]) - torch.min(lo, boxes2[..., :2])).clamp(min=0).prod(-1)
    return inter / union - (enclosing - union) / enclosing


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Inverse of the sigmoid, ``log(x / (1 - x))``, with x clamped to [0, 1] and both terms to >= eps
    (eps 1e-3 as in detrex)."""
    x = x.clamp(min=0, max=1)
    x1 = x.clamp(min=eps)
    x2 = (1 - x).clamp(min=eps)
    return torch.log(x1 / x2)
