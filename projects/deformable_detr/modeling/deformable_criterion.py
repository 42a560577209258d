"""`DeformableCriterion`: DETR's set loss plus the class-agnostic loss on two-stage encoder proposals.

Follows Deformable-DETR (Zhu et al. 2021) and detrex: when the outputs hold ``enc_outputs`` (two-stage mode),
the proposals are matched to the ground truth with every label set to 0 (a single "object" class) and get
the same losses, reported with the suffix ``_enc``. They are a second `PredictionGroup`, matched in the same
device-to-host transfer as the decoder sets.
"""

from typing import Dict, List

from detrex.modeling.criterion import SetCriterion
from detrex.modeling.criterion.set_criterion import PredictionGroup

__all__ = ["DeformableCriterion"]


class DeformableCriterion(SetCriterion):
    """`SetCriterion` plus ``loss_{class,bbox,giou}_enc`` for ``outputs["enc_outputs"]`` (two-stage only).

    Same arguments as `SetCriterion`. ``outputs`` may hold ``enc_outputs``: ``{"pred_logits" (B, N, K),
    "pred_boxes" (B, N, 4)}`` (the proposals, normalized cxcywh).
    """

    def prediction_groups(self, outputs: Dict) -> List[PredictionGroup]:
        groups = super().prediction_groups({k: v for k, v in outputs.items() if k != "enc_outputs"})
        enc = outputs.get("enc_outputs")
        if enc is not None:
            groups.append(PredictionGroup(enc["pred_logits"][None], enc["pred_boxes"][None], ["_enc"], binary=True))
        return groups
