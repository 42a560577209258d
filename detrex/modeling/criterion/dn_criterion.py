"""DN-DETR's criterion (Li et al. 2022): `SetCriterion` on the matching queries plus the denoising losses.

The denoising queries have a fixed assignment: slot ``g * M + j`` of image i reconstructs its ground truth j
(g < G groups, j < n_i, M = max ground-truth count per image), so no matching is needed. Their losses use the
same terms as the matching part, normalized by ``num_boxes * G``. Unlike the authors' copy, every tensor is
created on the outputs' device (no ``.cuda()``).
"""

from typing import Dict, List

import torch

from .set_criterion import SetCriterion

__all__ = ["DNCriterion"]


class DNCriterion(SetCriterion):
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
