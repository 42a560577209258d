"""Set-prediction loss of DETR (Carion et al. 2020) with detrex's focal-loss variant.

For the final predictions and for every entry of ``outputs["aux_outputs"]`` independently: Hungarian
matching, then a classification loss over all queries and L1 + GIoU losses over matched queries, all
normalized by the number of ground-truth boxes in the batch (averaged over processes, at least 1).
"""

from typing import Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..losses import giou_loss, sigmoid_focal_loss

__all__ = ["SetCriterion"]


def _world_size() -> int:
    try:
        from detrex.utils.comm import get_world_size
    except ImportError:  # pragma: no cover - comm is part of detrex; fall back to torch directly
        import torch.distributed as dist

        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return get_world_size()


class SetCriterion(nn.Module):
    """Loss for DETR-style detectors.

    Args:
        num_classes: number of object classes (no "no-object" class in the logits for focal loss).
        matcher: e.g. `HungarianMatcher`.
        weight_dict: loss name -> weight (the detector multiplies the losses by these).
        losses: which groups to compute: ``"class"`` (``loss_class``) and ``"boxes"``
            (``loss_bbox``, ``loss_giou``).
        loss_class_type: ``"focal_loss"`` (sigmoid, logits (B, Q, K)) or ``"ce_loss"`` (softmax over
            K + 1 classes, the last being no-object, weighted by ``eos_coef``).
        alpha, gamma: focal loss parameters.
        eos_coef: weight of the no-object class in the CE loss.

    Output keys: ``loss_class``, ``loss_bbox``, ``loss_giou`` for the final predictions and the same with
    suffix ``_{i}`` for ``aux_outputs[i]``.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: Dict[str, float],
        losses: List[str] = ("class", "boxes"),
        loss_class_type: str = "focal_loss",
        alpha: float = 0.25,
        gamma: float = 2.0,
        eos_coef: float = 0.1,
    ):
        super().__init__()
        if loss_class_type not in ("focal_loss", "ce_loss"):
            raise ValueError(
                f"SetCriterion: loss_class_type must be 'focal_loss' or 'ce_loss', got {loss_class_type!r}"
            )
        losses = [str(x) for x in losses]
        unknown = set(losses) - {"class", "boxes"}
        if unknown:
            raise ValueError(f"SetCriterion: unknown losses {sorted(unknown)}; use 'class' and/or 'boxes'")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = {str(k): float(v) for k, v in dict(weight_dict).items()}
        self.losses = losses
        self.loss_class_type = loss_class_type
        self.alpha = alpha
        self.gamma = gamma
        self.eos_coef = eos_coef
        if loss_class_type == "ce_loss":
            empty_weight = torch.ones(num_classes + 1)
            empty_weight[-1] = eos_coef
            self.register_buffer("empty_weight", empty_weight, persistent=False)

    @staticmethod
    def _src_permutation_idx(indices):
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for src, _ in indices])
        return batch_idx, src_idx

    def loss_labels(self, outputs, targets, indices, num_boxes) -> Dict[str, torch.Tensor]:
        src_logits = outputs["pred_logits"]
        b, q, k = src_logits.shape
        idx = self._src_permutation_idx(indices)
        matched_labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(src_logits.device)
        target_classes = torch.full((b, q), self.num_classes, dtype=torch.int64, device=src_logits.device)
        target_classes[idx] = matched_labels.long()
        if self.loss_class_type == "ce_loss":
            loss = F.cross_entropy(src_logits.transpose(1, 2), target_classes, self.empty_weight.to(src_logits.dtype))
        else:
            onehot = torch.zeros((b, q, k + 1), dtype=src_logits.dtype, device=src_logits.device)
            onehot.scatter_(2, target_classes.unsqueeze(-1), 1)
            loss = sigmoid_focal_loss(src_logits, onehot[:, :, :-1], num_boxes, alpha=self.alpha, gamma=self.gamma)
        return {"loss_class": loss}

    def loss_boxes(self, outputs, targets, indices, num_boxes) -> Dict[str, torch.Tensor]:
        idx = self._src_permutation_idx(indices)
        src_boxes = outputs["pred_boxes"][idx]
        target_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)], dim=0).to(src_boxes)
        return {
            "loss_bbox": F.l1_loss(src_boxes, target_boxes, reduction="none").sum() / num_boxes,
            "loss_giou": giou_loss(src_boxes, target_boxes, num_boxes),
        }

    def get_loss(self, loss, outputs, targets, indices, num_boxes):
        fn = {"class": self.loss_labels, "boxes": self.loss_boxes}[loss]
        return fn(outputs, targets, indices, num_boxes)

    def get_num_boxes(self, targets, device) -> float:
        """Ground-truth boxes in the batch, averaged over processes, at least 1."""
        num_boxes = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        world_size = _world_size()
        if world_size > 1:
            torch.distributed.all_reduce(num_boxes)
        return torch.clamp(num_boxes / world_size, min=1).item()

    def forward(self, outputs: Dict, targets: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs: ``pred_logits`` (B, Q, K), ``pred_boxes`` (B, Q, 4) normalized cxcywh and optionally
                ``aux_outputs``: a list of dicts with the same two keys (any number of entries).
            targets: per image ``labels`` (n,) and ``boxes`` (n, 4) normalized cxcywh.
        """
        num_boxes = self.get_num_boxes(targets, outputs["pred_logits"].device)
        losses = {}
        main = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        indices = self.matcher(main, targets)
        for loss in self.losses:
            losses.update(self.get_loss(loss, main, targets, indices, num_boxes))
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            aux_indices = self.matcher(aux, targets)
            for loss in self.losses:
                for k, v in self.get_loss(loss, aux, targets, aux_indices, num_boxes).items():
                    losses[f"{k}_{i}"] = v
        return losses
