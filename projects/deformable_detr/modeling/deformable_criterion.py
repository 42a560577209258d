"""`DeformableCriterion`: DETR's set loss plus the class-agnostic loss on two-stage encoder proposals.

Follows Deformable-DETR (Zhu et al. 2021) and detrex: when the outputs hold ``enc_outputs`` (two-stage mode),
the proposals are matched to the ground truth with every label set to 0 (a single "object" class) and get
the same losses, reported with the suffix ``_enc``.
"""

from typing import Dict, List

import torch

from detrex.modeling.criterion import SetCriterion

__all__ = ["DeformableCriterion"]


class DeformableCriterion(SetCriterion):
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
