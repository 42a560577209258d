"""Reference: the per-set criterion and matcher as they were before the batched rewrite (commit aa44cca), kept
verbatim (module headers dropped, names prefixed ``Ref``) so that the batched code can be tested against it.

Every set is matched on its own (one cost matrix and one host copy per set) and scored on its own.
"""

from typing import Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from detrex.layers.box_ops import generalized_box_iou


def box_cxcywh_to_xyxy(bbox):
    cx, cy, w, h = bbox.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def sigmoid_focal_loss(inputs, targets, num_boxes, alpha=0.25, gamma=2.0):
    prob = inputs.sigmoid()
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.sum() / num_boxes


def giou_loss(src_boxes, target_boxes, num_boxes):
    if src_boxes.numel() == 0:
        return src_boxes.sum() * 0.0
    giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(target_boxes)))
    return (1 - giou).sum() / num_boxes


def _world_size() -> int:
    return 1


class RefHungarianMatcher(nn.Module):
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


class RefSetCriterion(nn.Module):
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


class RefDNCriterion(RefSetCriterion):
    """`SetCriterion` + denoising losses.

    Takes `SetCriterion`'s arguments. ``forward(outputs, targets)`` expects, besides ``pred_logits``,
    ``pred_boxes`` and ``aux_outputs`` (the matching queries), the keys written by DN-DETR's forward:

    - ``denoising_output``: ``{"pred_logits" (B, G*M, K), "pred_boxes" (B, G*M, 4), "aux_outputs": [...]}``
      (absent or None when the batch had no denoising queries);
    - ``denoising_groups`` (G) and ``max_gt_num_per_image`` (M): ints or 0-d tensors.

    Output keys: the `SetCriterion` keys, plus ``loss_class_dn``, ``loss_bbox_dn``, ``loss_giou_dn`` and
    ``loss_{class,bbox,giou}_dn_{i}`` for each ``aux_outputs`` entry i. Without denoising queries the dn
    keys are still present, as zeros.
    """

    _MATCHING_KEYS = ("pred_logits", "pred_boxes", "aux_outputs")

    @staticmethod
    def dn_indices(targets: List[Dict[str, torch.Tensor]], denoising_groups: int, max_gt_num_per_image: int, device):
        """Fixed (query index, target index) pairs per image, in the `SetCriterion` indices format."""
        indices = []
        for t in targets:
            n = len(t["labels"])
            tgt = torch.arange(n, dtype=torch.int64, device=device).repeat(denoising_groups)
            offsets = torch.arange(denoising_groups, dtype=torch.int64, device=device) * max_gt_num_per_image
            src = (offsets[:, None] + torch.arange(n, dtype=torch.int64, device=device)[None]).flatten()
            indices.append((src, tgt))
        return indices

    def _dn_loss_names(self) -> List[str]:
        names = []
        if "class" in self.losses:
            names.append("loss_class")
        if "boxes" in self.losses:
            names += ["loss_bbox", "loss_giou"]
        return names

    def forward(self, outputs: Dict, targets: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        losses = super().forward({k: outputs[k] for k in self._MATCHING_KEYS if k in outputs}, targets)
        device = outputs["pred_logits"].device
        num_aux = len(outputs.get("aux_outputs", []))
        dn_out = outputs.get("denoising_output")
        if dn_out is None:
            zero = torch.zeros((), device=device, dtype=outputs["pred_logits"].dtype)
            for suffix in ["_dn"] + [f"_dn_{i}" for i in range(num_aux)]:
                losses.update({name + suffix: zero.clone() for name in self._dn_loss_names()})
            return losses

        groups = int(outputs["denoising_groups"])
        max_gt = int(outputs["max_gt_num_per_image"])
        num_boxes = self.get_num_boxes(targets, device) * groups
        indices = self.dn_indices(targets, groups, max_gt, device)
        dn_aux = dn_out.get("aux_outputs", [])
        if len(dn_aux) < num_aux:
            raise ValueError(
                f"DNCriterion: denoising_output has {len(dn_aux)} aux_outputs but the matching part has {num_aux}"
            )
        sets = [("_dn", dn_out)] + [(f"_dn_{i}", dn_aux[i]) for i in range(num_aux)]
        for suffix, preds in sets:
            for loss in self.losses:
                for k, v in self.get_loss(loss, preds, targets, indices, num_boxes).items():
                    losses[k + suffix] = v
        return losses


class RefDeformableCriterion(RefSetCriterion):
    """`SetCriterion` plus ``loss_{class,bbox,giou}_enc`` for ``outputs["enc_outputs"]`` (two-stage only).

    Same arguments as `SetCriterion`.
    """

    def forward(self, outputs: Dict, targets: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs: ``pred_logits`` (B, Q, K), ``pred_boxes`` (B, Q, 4) normalized cxcywh, optional
                ``aux_outputs`` and optional ``enc_outputs`` (``pred_logits`` (B, N, K), ``pred_boxes`` (B, N, 4)).
            targets: per image ``labels`` (n,) and ``boxes`` (n, 4) normalized cxcywh.
        """
        decoder_outputs = {k: v for k, v in outputs.items() if k != "enc_outputs"}
        losses = super().forward(decoder_outputs, targets)
        enc_outputs = outputs.get("enc_outputs")
        if enc_outputs is not None:
            num_boxes = self.get_num_boxes(targets, enc_outputs["pred_logits"].device)
            bin_targets = [dict(t, labels=torch.zeros_like(t["labels"])) for t in targets]
            indices = self.matcher(enc_outputs, bin_targets)
            for loss in self.losses:
                for k, v in self.get_loss(loss, enc_outputs, bin_targets, indices, num_boxes).items():
                    losses[f"{k}_enc"] = v
        return losses
