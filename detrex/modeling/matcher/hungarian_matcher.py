"""Hungarian matching between predictions and ground truth (DETR, Carion et al. 2020), with the focal
class cost of Deformable-DETR; semantics of detrex's ``HungarianMatcher``.

Batched for a launch-bound GPU: the cost matrices of every prediction set and image are computed in one go
(`HungarianMatcher.cost_matrix`, (S, B, Q, T) for S sets of B images against all T targets of the batch),
brought to the host in **one** transfer (`linear_sum_assignments`, which also takes the cost matrices of several
groups of sets, e.g. decoder sets and two-stage proposals, in that one transfer), and only the assignment itself
(scipy's ``linear_sum_assignment``) runs per (set, image) on the host.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from detrex.layers.box_ops import box_cxcywh_to_xyxy, generalized_box_iou

__all__ = ["HungarianMatcher", "linear_sum_assignments"]


def linear_sum_assignments(costs: Sequence[torch.Tensor], sizes: Sequence[int],
                           payload: Optional[torch.Tensor] = None) -> Tuple[List[np.ndarray], Optional[np.ndarray]]:
    """Optimal one-to-one assignments for every (set, image) of several cost tensors, with one device-to-host copy.

    Args:
        costs: tensors (S_g, B, Q_g, T) on any device: the cost of query q of image b in set s against each of the
            T targets of the batch (images' targets concatenated in order).
        sizes: the number of targets of each of the B images (sum = T).
        payload: an optional 1-d tensor to bring to the host in the same transfer (e.g. the target labels, to
            check them there), returned as float32 values.

    Returns:
        one int64 array (4, P_g) per cost tensor: rows = set index, image index, query index and target index
        into the concatenated targets, for the P_g matched pairs (min(Q_g, n_b) per set and image), in set-major,
        then image, then query-order of scipy's solution; and the payload on the host (or None).
    """
    from scipy.optimize import linear_sum_assignment  # imported lazily: scipy is slow to import

    sizes = [int(n) for n in sizes]
    empty = [np.zeros((4, 0), dtype=np.int64) for _ in costs]
    if sum(sizes) == 0 or (not costs and payload is None):
        return empty, (None if payload is None else np.zeros(0, np.float32))
    parts = [c.detach().reshape(-1).float() for c in costs]
    if payload is not None:
        parts.append(payload.detach().reshape(-1).float())
    host = torch.cat(parts).cpu().numpy()  # the one device-to-host transfer
    host_payload = None if payload is None else host[host.size - payload.numel():]
    offsets = np.cumsum([0] + sizes)
    results, start = [], 0
    for c in costs:
        s_count, b_count, q_count, t_count = c.shape
        block = host[start:start + c.numel()].reshape(s_count, b_count, q_count, t_count)
        start += c.numel()
        parts = []
        for s in range(s_count):
            for b in range(b_count):
                if sizes[b] == 0:
                    continue
                rows, cols = linear_sum_assignment(block[s, b, :, offsets[b]:offsets[b + 1]])
                n = len(rows)
                parts.append(np.stack([np.full(n, s), np.full(n, b), rows, cols + offsets[b]]).astype(np.int64))
        results.append(np.concatenate(parts, axis=1) if parts else np.zeros((4, 0), dtype=np.int64))
    return results, host_payload


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
    def cost_matrix(self, logits: torch.Tensor, boxes: torch.Tensor, tgt_ids: torch.Tensor,
                    tgt_boxes: torch.Tensor) -> torch.Tensor:
        """Matching cost of every query of every set and image against every target of the batch.

        Args:
            logits: (S, B, Q, K) class logits; boxes: (S, B, Q, 4) normalized cxcywh.
            tgt_ids: (T,) int64 labels and tgt_boxes: (T, 4) normalized cxcywh of all images' targets, concatenated.

        Returns:
            (S, B, Q, T) costs in the dtype of ``boxes`` (only each image's own columns are used).
        """
        s, b, q, k = logits.shape
        logits = logits.reshape(s * b * q, -1)
        tgt_ids = tgt_ids.clamp(0, k - 1)  # an out-of-range label is reported by the criterion, not a device assert
        out_bbox = boxes.reshape(s * b * q, 4)
        tgt_bbox = tgt_boxes.to(out_bbox.dtype)
        if self.cost_class_type == "ce_cost":
            cost_class = -logits.softmax(-1)[:, tgt_ids]
        else:  # the focal cost is elementwise, so only the targets' columns are computed
            prob = logits[:, tgt_ids].sigmoid()
            neg = (1 - self.alpha) * (prob**self.gamma) * (-(1 - prob + 1e-8).log())
            pos = self.alpha * ((1 - prob) ** self.gamma) * (-(prob + 1e-8).log())
            cost_class = pos - neg
        cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)
        cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(out_bbox), box_cxcywh_to_xyxy(tgt_bbox))
        cost = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        return cost.view(s, b, q, -1)

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, torch.Tensor], targets: List[Dict[str, torch.Tensor]]
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Match each image of one prediction set (the criterion matches all its sets at once instead).

        Args:
            outputs: ``pred_logits`` (B, Q, K) and ``pred_boxes`` (B, Q, 4) normalized cxcywh.
            targets: per image ``labels`` (n,) int64 and ``boxes`` (n, 4) normalized cxcywh.

        Returns:
            per image ``(query_indices, target_indices)``, int64 CPU tensors of length min(Q, n).
        """
        bs = outputs["pred_logits"].shape[0]
        sizes = [len(t["labels"]) for t in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in range(bs)]
        tgt_ids = torch.cat([t["labels"] for t in targets]).long()
        tgt_boxes = torch.cat([t["boxes"] for t in targets])
        cost = self.cost_matrix(outputs["pred_logits"][None], outputs["pred_boxes"][None], tgt_ids, tgt_boxes)
        (pairs,), _ = linear_sum_assignments([cost], sizes)
        offsets = np.cumsum([0] + sizes)
        indices = []
        for b in range(bs):
            sel = pairs[1] == b
            indices.append((torch.as_tensor(pairs[2, sel]), torch.as_tensor(pairs[3, sel] - offsets[b])))
        return indices
