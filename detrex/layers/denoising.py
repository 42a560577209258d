"""Denoising queries of DN-DETR (Li et al. 2022, "DN-DETR: Accelerate DETR Training by Introducing Query
DeNoising"), with detrex's semantics and names (`GenerateDNQueries`).

In training, every ground-truth box is repeated in ``denoising_groups`` groups, its label and box are noised,
and the noised copies are fed to the decoder *in front of* the learned matching queries. Each copy must
reconstruct its own ground truth (fixed assignment, no Hungarian matching). An attention mask keeps the
matching queries from seeing the denoising ones and the groups from seeing each other.

Query layout along the query axis (length ``G * M + Q``; M = max ground-truth count per image in the batch,
G = groups, Q = matching queries)::

    [group 0: M slots | group 1: M slots | ... | group G-1: M slots | Q matching queries]

Image i fills slots ``g * M + [0, n_i)`` of every group g; the remaining slots are zero padding.

Everything is created on the device of the ground-truth tensors (no ``.cuda()``).
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .box_ops import inverse_sigmoid

__all__ = ["apply_label_noise", "apply_box_noise", "GenerateDNQueries", "dn_post_process"]


def apply_label_noise(labels: torch.Tensor, label_noise_prob: float = 0.2, num_classes: int = 80) -> torch.Tensor:
    """Replace each label, with probability ``label_noise_prob``, by one drawn uniformly from
    ``[0, num_classes)``. Returns a new tensor (the input is not modified).

    Args:
        labels: (n,) int64 class ids.
        num_classes: size of the label vocabulary to draw from. DN-DETR passes the label encoder's size
            (classes + 1, the last id being "no object"), so a noised label can be "no object".
    """
    labels = labels.clone()
    if label_noise_prob <= 0 or labels.numel() == 0:
        return labels
    noised = torch.rand(labels.shape, device=labels.device) < label_noise_prob
    random_labels = torch.randint(0, num_classes, labels.shape, device=labels.device, dtype=labels.dtype)
    return torch.where(noised, random_labels, labels)


def apply_box_noise(boxes: torch.Tensor, box_noise_scale: float = 0.4) -> torch.Tensor:
    """Jitter normalized cxcywh boxes: centres move by up to ``scale * (w/2, h/2)``, sizes by up to
    ``scale * (w, h)`` (uniformly), then everything is clamped to [0, 1]. Returns a new tensor.

    Args:
        boxes: (n, 4) normalized (cx, cy, w, h).
    """
    boxes = boxes.clone()
    if box_noise_scale <= 0:
        return boxes
    diff = torch.cat([boxes[:, 2:] / 2, boxes[:, 2:]], dim=1)
    boxes = boxes + (torch.rand_like(boxes) * 2 - 1.0) * diff * box_noise_scale
    return boxes.clamp(min=0.0, max=1.0)


class GenerateDNQueries(nn.Module):
    """Builds DN-DETR's noised label/box queries and the decoder self-attention mask.

    Args:
        num_queries: number of matching (learned) queries Q that follow the denoising queries.
        num_classes: rows of ``label_encoder``. DN-DETR passes ``classes + 1``: the last row encodes
            "no object" and is also the content of the matching queries (`matching_label_queries`).
        label_embed_dim: width C of a label query (the transformer width).
        denoising_groups: number of noised copies G of the ground truth.
        label_noise_prob: probability of replacing a label (drawn from all ``num_classes`` ids).
        box_noise_scale: relative box jitter (see `apply_box_noise`).
        with_indicator: reserve the last channel as an indicator: 1 for denoising queries, 0 for matching
            queries; ``label_encoder`` is then ``Embedding(num_classes, C - 1)``.

    Defaults are detrex's; DN-DETR uses ``num_classes=81`` and ``with_indicator=True``.

    State dict: ``label_encoder.weight`` [num_classes, C - 1] (with indicator) or [num_classes, C].
    """

    def __init__(
        self,
        num_queries: int = 300,
        num_classes: int = 80,
        label_embed_dim: int = 256,
        denoising_groups: int = 5,
        label_noise_prob: float = 0.2,
        box_noise_scale: float = 0.4,
        with_indicator: bool = False,
    ):
        super().__init__()
        if denoising_groups < 1:
            raise ValueError(f"GenerateDNQueries: denoising_groups must be >= 1, got {denoising_groups}")
        if not 0.0 <= label_noise_prob <= 1.0:
            raise ValueError(f"GenerateDNQueries: label_noise_prob must be in [0, 1], got {label_noise_prob}")
        self.num_queries = num_queries
        self.num_classes = num_classes
        self.label_embed_dim = label_embed_dim
        self.denoising_groups = denoising_groups
        self.label_noise_prob = label_noise_prob
        self.box_noise_scale = box_noise_scale
        self.with_indicator = with_indicator
        self.label_encoder = nn.Embedding(num_classes, label_embed_dim - 1 if with_indicator else label_embed_dim)

    def generate_query_masks(self, max_gt_num_per_image: int, device=None) -> torch.Tensor:
        """(G*M + Q, G*M + Q) bool self-attention mask, True = may not attend.

        Matching queries do not see any denoising query; a denoising query sees its own group and the
        matching queries, not the other groups.
        """
        m, g = max_gt_num_per_image, self.denoising_groups
        num_dn = m * g
        size = num_dn + self.num_queries
        attn_mask = torch.zeros(size, size, dtype=torch.bool, device=device)
        attn_mask[num_dn:, :num_dn] = True
        for i in range(g):
            rows = slice(m * i, m * (i + 1))
            attn_mask[rows, : m * i] = True
            attn_mask[rows, m * (i + 1) : num_dn] = True
        return attn_mask

    def matching_label_queries(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        """Content of the Q matching queries: the "no object" embedding (last ``label_encoder`` row), with
        indicator 0. Returns (B, Q, C)."""
        weight = self.label_encoder.weight
        query = weight[-1].to(device=device or weight.device, dtype=dtype or weight.dtype)
        if self.with_indicator:
            query = torch.cat([query, query.new_zeros(1)])
        return query.expand(batch_size, self.num_queries, -1).contiguous()

    def forward(
        self, gt_labels_list: Sequence[torch.Tensor], gt_boxes_list: Sequence[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
        """
        Args:
            gt_labels_list: per image (n_i,) int64 labels.
            gt_boxes_list: per image (n_i, 4) normalized cxcywh boxes.

        Returns:
            noised_label_queries: (B, G*M, C) (padding slots zero).
            noised_box_queries: (B, G*M, 4) noised boxes *before* sigmoid (inverse-sigmoid space).
            attn_mask: (G*M + Q, G*M + Q) bool, see `generate_query_masks`.
            denoising_groups: G.
            max_gt_num_per_image: M (0 if the batch has no ground truth: then there are no DN queries).
        """
        if len(gt_labels_list) != len(gt_boxes_list) or len(gt_labels_list) == 0:
            raise ValueError(
                f"GenerateDNQueries: expected one labels and one boxes tensor per image (>= 1 image), got "
                f"{len(gt_labels_list)} and {len(gt_boxes_list)}"
            )
        device = gt_boxes_list[0].device
        batch_size = len(gt_labels_list)
        g = self.denoising_groups
        counts = [int(x.numel()) for x in gt_labels_list]
        for i, (labels, boxes) in enumerate(zip(gt_labels_list, gt_boxes_list)):
            if boxes.shape != (labels.numel(), 4):
                raise ValueError(
                    f"GenerateDNQueries: image {i} has {labels.numel()} labels but boxes of shape "
                    f"{tuple(boxes.shape)}; expected ({labels.numel()}, 4) normalized cxcywh"
                )
        m = max(counts)

        labels = torch.cat([x.reshape(-1) for x in gt_labels_list]).to(device=device, dtype=torch.long)
        boxes = torch.cat([x.reshape(-1, 4) for x in gt_boxes_list]).to(device)
        # groups are stacked: [all GT of the batch] x G
        labels = labels.repeat(g)
        boxes = boxes.repeat(g, 1)
        noised_labels = apply_label_noise(labels, self.label_noise_prob, self.num_classes)
        noised_boxes = inverse_sigmoid(apply_box_noise(boxes, self.box_noise_scale))
        label_embedding = self.label_encoder(noised_labels)
        if self.with_indicator:
            label_embedding = torch.cat([label_embedding, label_embedding.new_ones(len(label_embedding), 1)], 1)

        label_queries = label_embedding.new_zeros(batch_size, m * g, self.label_embed_dim)
        box_queries = noised_boxes.new_zeros(batch_size, m * g, 4)
        if labels.numel() > 0:
            image_idx = torch.cat(
                [torch.full((n,), i, dtype=torch.long, device=device) for i, n in enumerate(counts)]
            ).repeat(g)
            slot_in_group = torch.cat([torch.arange(n, device=device) for n in counts])
            slot = torch.cat([slot_in_group + m * i for i in range(g)])
            label_queries[image_idx, slot] = label_embedding
            box_queries[image_idx, slot] = noised_boxes
        attn_mask = self.generate_query_masks(m, device)
        return label_queries, box_queries, attn_mask, g, m

    def extra_repr(self) -> str:
        return (
            f"num_queries={self.num_queries}, groups={self.denoising_groups}, "
            f"label_noise_prob={self.label_noise_prob}, box_noise_scale={self.box_noise_scale}, "
            f"with_indicator={self.with_indicator}"
        )


def dn_post_process(
    outputs_class: torch.Tensor,
    outputs_coord: torch.Tensor,
    denoising_groups: int,
    max_gt_num_per_image: int,
    aux_loss: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor, Optional[Dict]]:
    """Split decoder outputs into the denoising part and the matching part (DN-DETR).

    Args:
        outputs_class: [L, B, G*M + Q, K] logits; outputs_coord: [L, B, G*M + Q, 4] boxes.
        denoising_groups, max_gt_num_per_image: G and M from `GenerateDNQueries`.
        aux_loss: also pack the first L-1 entries of the denoising part as ``aux_outputs``.

    Returns:
        the matching part [L, B, Q, K] and [L, B, Q, 4], and the denoising output
        ``{"pred_logits": (B, G*M, K), "pred_boxes": (B, G*M, 4)[, "aux_outputs": [...]]}`` of the last
        entry (None when M == 0, i.e. there were no denoising queries).
    """
    num_dn = int(max_gt_num_per_image) * int(denoising_groups)
    if num_dn <= 0:
        return outputs_class, outputs_coord, None
    dn_class, dn_coord = outputs_class[:, :, :num_dn], outputs_coord[:, :, :num_dn]
    out = {"pred_logits": dn_class[-1], "pred_boxes": dn_coord[-1]}
    if aux_loss:
        out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(dn_class[:-1], dn_coord[:-1])]
    return outputs_class[:, :, num_dn:], outputs_coord[:, :, num_dn:], out
