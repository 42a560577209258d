"""Set-prediction loss of DETR (Carion et al. 2020) with detrex's focal-loss variant, batched over prediction sets.

A DETR detector is supervised on many prediction sets per iteration: the final decoder layer, every auxiliary
layer, for KS-DETR the teachers' final layers, for DN-DETR the denoising part of each of them. Each set is matched
to the ground truth independently (Hungarian matching), then gets a classification loss over all its queries and
L1 + GIoU losses over its matched queries, normalized by the number of ground-truth boxes in the batch (averaged
over processes, at least 1). The values are exactly those of scoring each set on its own, but the work is done for
all sets at once, because on a GPU the per-set version is bound by kernel launches and host syncs:

1. the cost matrices of every set and image in one computation and one device-to-host transfer
   (`detrex.modeling.matcher.linear_sum_assignments`); only the assignment runs per (set, image), on the host;
2. the matched pairs of all sets (and the fixed denoising pairs) go back to the device as one index tensor;
3. the focal (or cross-entropy) loss of all sets in one elementwise computation, summed per set; the L1 and GIoU
   losses of all matched pairs at once, summed per set with one ``index_add``;
4. the per-set values come out as one vector: `weighted_losses` returns a `LossDict` whose keys are views of it and
   whose ``total`` is one sum.

Prediction sets enter as a `PredictionGroup` (sets of one query layout, stacked); a detector passes its stacked
decoder outputs as ``outputs["stacked_outputs"]`` (``pack_outputs`` does), otherwise the sets are stacked from
``pred_logits``/``pred_boxes`` and ``aux_outputs``.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from detrex.layers.box_ops import box_cxcywh_to_xyxy, paired_generalized_box_iou
from detrex.utils.transfer import host_tensor

from ..losses import sigmoid_focal_loss_elementwise
from ..matcher.hungarian_matcher import linear_sum_assignments
from .loss_dict import LossDict

__all__ = ["SetCriterion", "PredictionGroup", "set_suffixes"]

Normalizer = Union[float, torch.Tensor]


def _world_size() -> int:
    from detrex.utils.comm import get_world_size

    return get_world_size()


def set_suffixes(num_sets: int, prefix: str = "") -> List[str]:
    """Key suffixes of S stacked sets (aux 0 .. S-2, then the final set): ``_{prefix}{i}`` and ``_{prefix}``
    for the last (``""`` when there is no prefix): ``["_0", "_1", ""]``, ``["_dn_0", "_dn_1", "_dn"]``."""
    last = f"_{prefix}" if prefix else ""
    return [f"_{prefix}_{i}" if prefix else f"_{i}" for i in range(num_sets - 1)] + [last]


def display_order(keys: Sequence[str]) -> List[int]:
    """The order detrex logs a criterion's keys in: each kind's final-set keys (no ``_<i>`` suffix) ahead of its
    auxiliary keys (``loss_class, loss_bbox, loss_giou, loss_class_0, ...``, then ``loss_class_dn, ...,
    loss_class_dn_0, ...``), kinds in the order they first appear. Returns indices into ``keys``."""
    def kind_and_aux(key: str) -> Tuple[str, bool]:  # "loss_bbox_dn_3" -> ("dn", True), "loss_giou" -> ("", False)
        head, _, tail = key.rpartition("_")
        aux = tail.isdigit()
        parts = (head if aux else key).split("_", 2)
        return (parts[2] if len(parts) == 3 else ""), aux

    tags = [kind_and_aux(k) for k in keys]
    first = {}
    for i, (kind, _) in enumerate(tags):
        first.setdefault(kind, i)
    return sorted(range(len(keys)), key=lambda i: (first[tags[i][0]], tags[i][1], i))


@dataclass
class PredictionGroup:
    """Prediction sets of one query layout, scored against one version of the targets.

    Attributes:
        logits: (S, B, Q, K) class logits of S sets, stacked (aux 0 .. S-2, then the final set).
        boxes: (S, B, Q, 4) boxes, normalized cxcywh.
        suffixes: S key suffixes of the matched part (`set_suffixes`).
        num_dn: the first ``num_dn`` queries of every set are denoising queries with DN-DETR's fixed assignment
            (query ``g * M + j`` of image b reconstructs its target j, g < ``dn_groups``, M = num_dn / G); they are
            not matched. 0 = no denoising queries.
        dn_groups: G.
        dn_suffixes: S key suffixes of the denoising part, or None (no denoising keys). With ``num_dn = 0`` the
            denoising keys are zeros.
        binary: score against class 0 for every target (two-stage proposals are class-agnostic).
    """

    logits: torch.Tensor
    boxes: torch.Tensor
    suffixes: Sequence[str]
    num_dn: int = 0
    dn_groups: int = 1
    dn_suffixes: Optional[Sequence[str]] = None
    binary: bool = False

    def __post_init__(self):
        s, b, q, _ = self.logits.shape
        if self.boxes.shape != (s, b, q, 4):
            raise ValueError(f"PredictionGroup: boxes {tuple(self.boxes.shape)} do not match logits "
                             f"{tuple(self.logits.shape)}; expected ({s}, {b}, {q}, 4)")
        if len(self.suffixes) != s or (self.dn_suffixes is not None and len(self.dn_suffixes) != s):
            raise ValueError(f"PredictionGroup: {s} sets but {len(self.suffixes)} suffixes")
        if not 0 <= self.num_dn <= q:
            raise ValueError(f"PredictionGroup: num_dn={self.num_dn} outside [0, {q}]")


def _stack_sets(main: Dict, aux: Sequence[Dict]) -> Tuple[torch.Tensor, torch.Tensor]:
    sets = list(aux) + [main]
    return torch.stack([o["pred_logits"] for o in sets]), torch.stack([o["pred_boxes"] for o in sets])


class SetCriterion(nn.Module):
    """Loss for DETR-style detectors.

    Args:
        num_classes: number of object classes (no "no-object" class in the logits for focal loss).
        matcher: a `HungarianMatcher` (anything with its ``cost_matrix``).
        weight_dict: loss name -> weight (`weighted_losses` applies them; keys without a weight count once).
        losses: which groups to compute: ``"class"`` (``loss_class``) and ``"boxes"``
            (``loss_bbox``, ``loss_giou``).
        loss_class_type: ``"focal_loss"`` (sigmoid, logits (B, Q, K)) or ``"ce_loss"`` (softmax over
            K + 1 classes, the last being no-object, weighted by ``eos_coef``).
        alpha, gamma: focal loss parameters.
        eos_coef: weight of the no-object class in the CE loss.

    ``forward(outputs, targets)`` returns the unweighted losses, `weighted_losses` the weighted ones (both as a
    `LossDict`). Keys: ``loss_class``, ``loss_bbox``, ``loss_giou`` for the final predictions and the same with
    suffix ``_{i}`` for ``aux_outputs[i]``.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: Dict[str, float],
        losses: Sequence[str] = ("class", "boxes"),
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
        self._weight_cache: Dict = {}

    # ------------------------------------------------------------------ inputs
    def prediction_groups(self, outputs: Dict) -> List[PredictionGroup]:
        """The prediction sets of ``outputs``: ``stacked_outputs`` (``{"pred_logits": (S, B, Q, K), "pred_boxes":
        (S, B, Q, 4)}``, aux sets then the final one) when present, else ``aux_outputs`` + the final
        ``pred_logits``/``pred_boxes`` stacked. Subclasses add denoising or proposal groups."""
        stacked = outputs.get("stacked_outputs")
        if stacked is not None:
            logits, boxes = stacked["pred_logits"], stacked["pred_boxes"]
            num_dn = int(stacked.get("num_denoising_queries", 0))
            if num_dn:  # a plain SetCriterion ignores denoising queries, as it ignores "denoising_output"
                logits, boxes = logits[:, :, num_dn:], boxes[:, :, num_dn:]
        else:
            for key in ("pred_logits", "pred_boxes"):
                if key not in outputs:
                    raise KeyError(f"{type(self).__name__}: outputs has no {key!r} (keys: {sorted(outputs)}); "
                                   "expected pred_logits (B, Q, K), pred_boxes (B, Q, 4) and optional aux_outputs")
            logits, boxes = _stack_sets(outputs, outputs.get("aux_outputs", []))
        return [PredictionGroup(logits, boxes, set_suffixes(logits.shape[0]))]

    def num_boxes(self, targets: List[Dict[str, torch.Tensor]], device) -> Normalizer:
        """Ground-truth boxes in the batch, averaged over processes, at least 1: a Python float in one process
        (known on the host, no sync), a 0-d device tensor (all-reduced on the device) with several."""
        count = float(sum(len(t["labels"]) for t in targets))
        world_size = _world_size()
        if world_size == 1:
            return max(count, 1.0)
        num = torch.full((), count, device=device)
        torch.distributed.all_reduce(num)
        return torch.clamp(num / world_size, min=1)

    get_num_boxes = num_boxes  # detrex's name

    # ------------------------------------------------------------------ outputs
    def forward(self, outputs: Dict, targets: List[Dict[str, torch.Tensor]]) -> LossDict:
        """
        Args:
            outputs: ``pred_logits`` (B, Q, K), ``pred_boxes`` (B, Q, 4) normalized cxcywh and optionally
                ``aux_outputs`` (a list of dicts with the same two keys, any number of entries) and
                ``stacked_outputs`` (all of them stacked, see `prediction_groups`).
            targets: per image ``labels`` (n,) and ``boxes`` (n, 4) normalized cxcywh.

        Returns:
            the unweighted losses (a `LossDict`).
        """
        keys, vector = self.loss_vector(outputs, targets)
        return LossDict(keys, vector, display_order(keys))

    def weighted_losses(self, outputs: Dict, targets: List[Dict[str, torch.Tensor]]) -> LossDict:
        """The losses multiplied by their ``weight_dict`` entries (keys without one are kept as they are); the
        `LossDict`'s ``total`` is the training loss."""
        keys, vector = self.loss_vector(outputs, targets)
        return LossDict(keys, vector * self._weights(keys, vector), display_order(keys))

    def _weights(self, keys: Sequence[str], like: torch.Tensor) -> torch.Tensor:
        values = tuple(self.weight_dict.get(k, 1.0) for k in keys)
        cache_key = (tuple(keys), values, like.device, like.dtype)
        weights = self._weight_cache.get(cache_key)
        if weights is None:  # built once per layout: no host-to-device copy per iteration
            weights = torch.tensor(values, dtype=like.dtype, device=like.device)
            self._weight_cache = {cache_key: weights}
        return weights

    # ------------------------------------------------------------------ the batched computation
    def loss_vector(self, outputs: Dict, targets: List[Dict[str, torch.Tensor]]) -> Tuple[List[str], torch.Tensor]:
        """All losses of all prediction groups: (keys, vector (N,)), unweighted."""
        groups = self.prediction_groups(outputs)
        device = groups[0].logits.device
        sizes = [len(t["labels"]) for t in targets]
        if len(sizes) != groups[0].logits.shape[1]:
            raise ValueError(f"{type(self).__name__}: {len(sizes)} targets for a batch of "
                             f"{groups[0].logits.shape[1]} images")
        num_boxes = self.num_boxes(targets, device)
        if sum(sizes):
            tgt_labels = torch.cat([t["labels"] for t in targets]).to(device=device, dtype=torch.int64)
            tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(device)
        else:
            tgt_labels = torch.zeros(0, dtype=torch.int64, device=device)
            tgt_boxes = torch.zeros((0, 4), device=device)
        pairs = self._all_pairs(groups, tgt_labels, tgt_boxes, sizes, device)
        keys, vectors = [], []
        for group, group_pairs in zip(groups, pairs):
            k, v = self._group_losses(group, group_pairs, tgt_labels, tgt_boxes, num_boxes)
            keys += k
            vectors.append(v)
        return keys, vectors[0] if len(vectors) == 1 else torch.cat(vectors)

    def _all_pairs(self, groups: List[PredictionGroup], tgt_labels, tgt_boxes, sizes: List[int],
                   device) -> List[torch.Tensor]:
        """Per group, the (set, image, query, target, is_denoising) index rows (5, P) of its supervised pairs, on
        the device: Hungarian pairs of the matched queries (one device-to-host transfer for all groups), then the
        fixed denoising pairs; one host-to-device copy for all groups."""
        costs = []
        for g in groups:
            labels = torch.zeros_like(tgt_labels) if g.binary else tgt_labels
            if sum(sizes):
                costs.append(self.matcher.cost_matrix(g.logits[:, :, g.num_dn:], g.boxes[:, :, g.num_dn:],
                                                      labels, tgt_boxes))
        # the labels travel with the cost matrices (same transfer) and are checked on the host
        matched, labels_host = linear_sum_assignments(costs, sizes, payload=tgt_labels)
        if not costs:
            matched = [np.zeros((4, 0), np.int64) for _ in groups]
        self._check_labels(labels_host, sizes)
        host = []
        for g, m in zip(groups, matched):
            m = np.concatenate([m, np.zeros((1, m.shape[1]), np.int64)])
            m[2] += g.num_dn
            host.append(np.concatenate([m, self._dn_pairs(g, sizes)], axis=1) if g.num_dn else m)
        lengths = [h.shape[1] for h in host]
        flat = host_tensor(np.concatenate(host, axis=1), torch.int64, device)
        return list(flat.split(lengths, dim=1))

    def _check_labels(self, labels: Optional[np.ndarray], sizes: List[int]) -> None:
        if labels is None or labels.size == 0:
            return
        bad = (labels < 0) | (labels >= self.num_classes)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            image = int(np.searchsorted(np.cumsum(sizes), first, side="right"))
            raise ValueError(
                f"{type(self).__name__}: target label {int(labels[first])} of image {image} in the batch is outside "
                f"[0, num_classes={self.num_classes}). The dataset has more categories than the model: set "
                "model.num_classes and model.criterion.num_classes to the number of categories in the dataset "
                "(the README's 'Your own COCO-format dataset').")

    @staticmethod
    def _dn_pairs(group: PredictionGroup, sizes: List[int]) -> np.ndarray:
        """DN-DETR's fixed pairs, (5, S * G * sum(n_b)): query ``g * M + j`` of image b <-> target ``off_b + j``."""
        s_count, g_count = group.logits.shape[0], group.dn_groups
        max_gt = group.num_dn // g_count
        offsets = np.cumsum([0] + list(sizes))
        per_image = []
        for b, n in enumerate(sizes):
            j = np.arange(n)
            q = (np.arange(g_count)[:, None] * max_gt + j[None]).reshape(-1)
            per_image.append(np.stack([np.full(q.size, b), q, np.tile(j + offsets[b], g_count)]))
        one_set = np.concatenate(per_image, axis=1) if per_image else np.zeros((3, 0), np.int64)
        n = one_set.shape[1]
        sets = np.repeat(np.arange(s_count), n)
        return np.concatenate([sets[None], np.tile(one_set, s_count), np.ones((1, n * s_count), np.int64)]).astype(
            np.int64)

    def _group_losses(self, group: PredictionGroup, pairs: torch.Tensor, tgt_labels: torch.Tensor,
                      tgt_boxes: torch.Tensor, num_boxes: Normalizer) -> Tuple[List[str], torch.Tensor]:
        """Keys and unweighted values of one group: per part (matched, then denoising if any) and per set, the
        class / bbox / giou losses that ``losses`` selects."""
        s_count = group.logits.shape[0]
        parts = 1 if group.dn_suffixes is None else 2
        set_idx, img_idx, query_idx, tgt_idx, is_dn = pairs.unbind(0)
        columns, names = [], []
        if "class" in self.losses:
            labels = tgt_labels[tgt_idx]
            if group.binary:
                labels = torch.zeros_like(labels)
            columns.append(self._class_loss(group, parts, set_idx, img_idx, query_idx, labels, num_boxes))
            names.append("loss_class")
        if "boxes" in self.losses:
            src = group.boxes[set_idx, img_idx, query_idx]
            tgt = tgt_boxes[tgt_idx].to(src.dtype)
            per_pair = torch.stack([(src - tgt).abs().sum(-1), 1 - paired_generalized_box_iou(
                box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt))], -1)
            slot = set_idx * parts + is_dn if parts == 2 else set_idx
            sums = per_pair.new_zeros((s_count * parts, 2)).index_add_(0, slot, per_pair).view(s_count, parts, 2)
            columns.append(self._normalize(sums, num_boxes, group.dn_groups))
            names += ["loss_bbox", "loss_giou"]
        if not columns:
            return [], group.logits.new_zeros(0)
        values = torch.cat([c if c.dim() == 3 else c[..., None] for c in columns], -1)  # (S, parts, C)
        values = values.transpose(0, 1).reshape(-1)
        suffix_lists = [group.suffixes] + ([group.dn_suffixes] if parts == 2 else [])
        keys = [f"{name}{suffix}" for suffixes in suffix_lists for suffix in suffixes for name in names]
        return keys, values

    @staticmethod
    def _normalize(sums: torch.Tensor, num_boxes: Normalizer, dn_groups: int) -> torch.Tensor:
        """(S, parts, ...) sums -> losses: the matched part over ``num_boxes``, the denoising part over
        ``num_boxes * G``."""
        if sums.shape[1] == 1:
            return sums / num_boxes
        return torch.cat([sums[:, :1] / num_boxes, sums[:, 1:] / (num_boxes * dn_groups)], 1)

    def _class_loss(self, group: PredictionGroup, parts: int, set_idx, img_idx, query_idx, labels,
                    num_boxes: Normalizer) -> torch.Tensor:
        """(S, parts) classification loss over all queries of each set and part."""
        logits = group.logits
        if self.loss_class_type == "ce_loss":
            target_classes = torch.full(logits.shape[:3], self.num_classes, dtype=torch.int64, device=logits.device)
            target_classes[set_idx, img_idx, query_idx] = labels
            weight = self.empty_weight.to(logits.dtype)
            nll = F.cross_entropy(logits.permute(0, 3, 1, 2), target_classes, weight, reduction="none")
            both = torch.stack([nll, weight[target_classes]], -1).sum(1)  # (S, Q, 2): weighted NLL, weight
            if parts == 1:
                per_part = both.sum(1, keepdim=True)
            else:
                per_part = torch.stack([both[:, group.num_dn:].sum(1), both[:, :group.num_dn].sum(1)], 1)
            # mean over the part's queries weighted by class (F.cross_entropy's "mean"); an empty part gives 0
            return per_part[..., 0] / per_part[..., 1].clamp(min=torch.finfo(per_part.dtype).tiny)
        onehot = torch.zeros_like(logits)
        onehot[set_idx, img_idx, query_idx, labels] = 1
        per_query = sigmoid_focal_loss_elementwise(logits, onehot, self.alpha, self.gamma).sum(dim=(1, 3))  # (S, Q)
        if parts == 1:
            return per_query.sum(1, keepdim=True) / num_boxes
        num_dn = group.num_dn
        sums = torch.stack([per_query[:, num_dn:].sum(1), per_query[:, :num_dn].sum(1)], 1)
        return self._normalize(sums, num_boxes, group.dn_groups)
