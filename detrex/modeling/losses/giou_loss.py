"""Generalized-IoU loss for matched box pairs."""

import torch

from detrex.layers.box_ops import box_cxcywh_to_xyxy, generalized_box_iou

__all__ = ["giou_loss"]


def giou_loss(src_boxes: torch.Tensor, target_boxes: torch.Tensor, num_boxes: float) -> torch.Tensor:
    """``sum(1 - GIoU(src_i, target_i)) / num_boxes`` over N matched pairs of normalized cxcywh boxes (N, 4)."""
    if src_boxes.numel() == 0:
        return src_boxes.sum() * 0.0
    giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(target_boxes)))
    return (1 - giou).sum() / num_boxes
