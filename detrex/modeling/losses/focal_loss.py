"""Sigmoid focal loss (Lin et al. 2017), normalized the DETR way."""

import torch
import torch.nn.functional as F

__all__ = ["sigmoid_focal_loss", "sigmoid_focal_loss_elementwise"]


def sigmoid_focal_loss_elementwise(inputs: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                                   gamma: float = 2.0) -> torch.Tensor:
    """Focal loss of every element: logits and {0, 1} targets of any (same) shape -> that shape.

    ``alpha`` weights positives (negatives get 1 - alpha; < 0 disables it); ``gamma`` is the focusing exponent.
    """
    prob = inputs.sigmoid()
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def sigmoid_focal_loss(
    inputs: torch.Tensor, targets: torch.Tensor, num_boxes: float, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Focal loss on logits, summed over all elements and divided by `num_boxes`.

    Args:
        inputs: (B, Q, K) logits.
        targets: (B, Q, K) binary targets (float).
        num_boxes: normalizer (number of ground-truth boxes, >= 1).
        alpha: weight of positives (negatives get 1 - alpha); < 0 disables it.
        gamma: focusing exponent.

    Returns:
        Scalar ``sum(loss) / num_boxes``. (detrex computes ``loss.mean(1).sum() / num_boxes * Q``, the
        same value.)
    """
    return sigmoid_focal_loss_elementwise(inputs, targets, alpha, gamma).sum() / num_boxes
