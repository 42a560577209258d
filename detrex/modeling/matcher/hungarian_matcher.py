"""Hungarian matching between predictions and ground truth (DETR, Carion et al. 2020), with the focal
class cost of Deformable-DETR; semantics of detrex's ``HungarianMatcher``."""

from typing import Dict, List, Tuple

import torch
import torch.nn as nn

from detrex.layers.box_ops import box_cxcywh_to_xyxy, generalized_box_iou

__all__ = ["HungarianMatcher"]


class HungarianMatcher(nn.Module):
    """One-to-one assignment minimizing
    ``cost_class * C_cls + cost_bbox * L1(cxcywh) + cost_giou * (-GIoU)``.

    Args:
        cost_class, cost_bbox, cost_giou: weights of the three costs (not all zero).
        cost_class_type: ``"focal_loss_cost"`` (sigmoid probabilities, focal-shaped cost) or
            ``"ce_cost"`` (softmax, cost = -p[target]).
        alpha, gamma: focal cost parameters.
    """

    def __init__(
        self,
        cost_class: float = 1,
        cost_bbox: float = 1,
        cost_giou: float = 1,
        cost_class_type: str = "focal_loss_cost",
        alpha: float = 0.25,
        gamma: float = 2.0,
    ):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all costs are 0")
        if cost_class_type not in ("ce_cost", "focal_loss_cost"):
            raise ValueError(
                f"HungarianMatcher: cost_class_type must be 'ce_cost' or 'focal_loss_cost', got {cost_class_type!r}"
            )
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.cost_class_type = cost_class_type
        self.alpha = alpha
        self.gamma = gamma

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, torch.Tensor], targets: List[Dict[str, torch.Tensor]]
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Match each image.

        Args:
            outputs: ``pred_logits`` (B, Q, K) and ``pred_boxes`` (B, Q, 4) normalized cxcywh.
            targets: per image ``labels`` (n,) int64 and ``boxes`` (n, 4) normalized cxcywh.

        Returns:
            per image ``(query_indices, target_indices)``, int64 tensors of length min(Q, n).
        """
        from scipy.optimize import linear_sum_assignment  # imported lazily: scipy is slow to import

        bs, num_queries = outputs["pred_logits"].shape[:2]
        logits = outputs["pred_logits"].flatten(0, 1)
        out_bbox = outputs["pred_boxes"].flatten(0, 1)
        tgt_ids = torch.cat([t["labels"] for t in targets]).long()
        tgt_bbox = torch.cat([t["boxes"] for t in targets]).to(out_bbox.dtype)
        sizes = [len(t["boxes"]) for t in targets]
        if tgt_ids.numel() == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return [(empty, empty) for _ in range(bs)]

        if self.cost_class_type == "ce_cost":
            cost_class = -logits.softmax(-1)[:, tgt_ids]
        else:
            prob = logits.sigmoid()
            neg = (1 - self.alpha) * (prob**self.gamma) * (-(1 - prob + 1e-8).log())
            pos = self.alpha * ((1 - prob) ** self.gamma) * (-(prob + 1e-8).log())
            cost_class = pos[:, tgt_ids] - neg[:, tgt_ids]
        cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)
        cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(out_bbox), box_cxcywh_to_xyxy(tgt_bbox))
        cost = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        cost = cost.view(bs, num_queries, -1).float().cpu()

        indices = []
        for i, c in enumerate(cost.split(sizes, -1)):
            rows, cols = linear_sum_assignment(c[i].numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
