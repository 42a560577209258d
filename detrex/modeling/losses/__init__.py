"""Loss functions used by the DETR criteria."""

from .focal_loss import sigmoid_focal_loss, sigmoid_focal_loss_elementwise
from .giou_loss import giou_loss

__all__ = ["sigmoid_focal_loss", "sigmoid_focal_loss_elementwise", "giou_loss"]
