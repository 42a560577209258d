"""DN-DETR's criterion (Li et al. 2022): `SetCriterion` on the matching queries plus the denoising losses.

The denoising queries have a fixed assignment: slot ``g * M + j`` of image i reconstructs its ground truth j
(g < G groups, j < n_i, M = max ground-truth count per image), so no matching is needed. Their losses use the
same terms as the matching part, normalized by ``num_boxes * G``. They are computed together with the matched
sets (one `PredictionGroup` whose first G*M queries are the denoising ones), so denoising adds no kernel launches
per set.
"""

from typing import Dict, List

import torch

from .set_criterion import PredictionGroup, SetCriterion, _stack_sets, set_suffixes

__all__ = ["DNCriterion"]


class DNCriterion(SetCriterion):
    """`SetCriterion` + denoising losses.

    Takes `SetCriterion`'s arguments. ``forward(outputs, targets)`` expects, besides ``pred_logits``,
    ``pred_boxes`` and ``aux_outputs`` (the matching queries), the keys written by DN-DETR's forward:

    - ``denoising_output``: ``{"pred_logits" (B, G*M, K), "pred_boxes" (B, G*M, 4), "aux_outputs": [...]}``
      (absent or None when the batch had no denoising queries);
    - ``denoising_groups`` (G) and ``max_gt_num_per_image`` (M): ints (or 0-d tensors: read on the host);
    - or, instead of the split dicts, ``stacked_outputs`` with the undivided decoder outputs
      ``{"pred_logits" (S, B, G*M + Q, K), "pred_boxes" (S, B, G*M + Q, 4), "num_denoising_queries": G*M}``.

    Output keys: the `SetCriterion` keys, plus ``loss_class_dn``, ``loss_bbox_dn``, ``loss_giou_dn`` and
    ``loss_{class,bbox,giou}_dn_{i}`` for each ``aux_outputs`` entry i. Without denoising queries the dn
    keys are still present, as zeros.
    """

    @staticmethod
    def dn_indices(targets: List[Dict[str, torch.Tensor]], denoising_groups: int, max_gt_num_per_image: int, device):
        """Fixed (query index, target index) pairs per image, in the matcher's indices format."""
        indices = []
        for t in targets:
            n = len(t["labels"])
            tgt = torch.arange(n, dtype=torch.int64, device=device).repeat(denoising_groups)
            offsets = torch.arange(denoising_groups, dtype=torch.int64, device=device) * max_gt_num_per_image
            src = (offsets[:, None] + torch.arange(n, dtype=torch.int64, device=device)[None]).flatten()
            indices.append((src, tgt))
        return indices

    def prediction_groups(self, outputs: Dict) -> List[PredictionGroup]:
        groups = int(outputs.get("denoising_groups") or 1)
        stacked = outputs.get("stacked_outputs")
        if stacked is not None:
            logits, boxes = stacked["pred_logits"], stacked["pred_boxes"]
            num_dn = int(stacked.get("num_denoising_queries", 0))
        else:
            logits, boxes = _stack_sets(outputs, outputs.get("aux_outputs", []))
            num_dn = 0
            dn_out = outputs.get("denoising_output")
            if dn_out is not None:
                dn_aux = dn_out.get("aux_outputs", [])
                if len(dn_aux) < logits.shape[0] - 1:
                    raise ValueError(f"DNCriterion: denoising_output has {len(dn_aux)} aux_outputs but the matching "
                                     f"part has {logits.shape[0] - 1}")
                dn_logits, dn_boxes = _stack_sets(dn_out, dn_aux[:logits.shape[0] - 1])
                num_dn = dn_logits.shape[2]
                logits, boxes = torch.cat([dn_logits, logits], 2), torch.cat([dn_boxes, boxes], 2)
        s = logits.shape[0]
        return [PredictionGroup(logits, boxes, set_suffixes(s), num_dn=num_dn, dn_groups=groups,
                                dn_suffixes=set_suffixes(s, "dn"))]
