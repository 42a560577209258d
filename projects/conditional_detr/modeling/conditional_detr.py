"""Conditional-DETR detector (Meng et al. 2021), following detrex's ``projects/conditional_detr`` module for
module.

Single-scale: the last backbone feature (``res5``, stride 32) is projected to ``embed_dim`` by a 1x1 conv,
encoded with sine positions (temperature 10000), and decoded by 300 learned query embeddings
(``query_embed``), each with a fixed 2-d reference point. The box head predicts (cx, cy) as offsets to the
reference point in inverse-sigmoid space and (w, h) directly; there is no iterative refinement.

Extension points (for KS-DETR, the same as `DABDETR`'s; see `detrex.modeling.single_scale_detr`):
  - `transformer_inputs(images, img_masks, features, targets) -> dict`: extra keyword arguments for the
    transformer (baseline: ``{}``; ``targets`` is None in eval).
  - the transformer returns ``(hidden_states [L, B, Q, C], reference_points [B, Q, 2])`` with any L;
    `forward_raw` applies the heads to every entry (all with the same reference points): the last is
    ``pred_logits``/``pred_boxes``, the earlier ones are ``aux_outputs``.
"""

import torch

from detrex.layers import inverse_sigmoid
from detrex.modeling.single_scale_detr import SingleScaleDETR

__all__ = ["ConditionalDETR"]


class ConditionalDETR(SingleScaleDETR):
    """Conditional-DETR: `SingleScaleDETR` with learned query embeddings ``query_embed``
    [num_queries, embed_dim] (N(0, 1) init) and reference-point-relative box centres.

    Args:
        backbone: returns a dict of feature maps; ``in_features[-1]`` is used.
        in_features: backbone output names (Conditional-DETR uses the last, ``["res5"]``).
        in_channels: channels of that feature (2048 for ResNet-50/101).
        position_embedding: e.g. ``PositionEmbeddingSine(128, temperature=10000, normalize=True)``.
        transformer: `ConditionalDetrTransformer`.
        embed_dim: transformer width.
        num_classes: number of classes (sigmoid logits, no background class).
        num_queries: number of learned queries (``query_embed`` [num_queries, embed_dim]).
        criterion: `SetCriterion`.
        aux_loss: supervise every decoder layer.
        pixel_mean, pixel_std, select_box_nums_for_evaluation, device: see `DETRBase`.
    """

    query_embedding_name = "query_embed"

    def predict(self, hidden_states: torch.Tensor, reference_points: torch.Tensor):
        """Heads on every decoder output.

        Args:
            hidden_states: [L, B, Q, C].
            reference_points: [B, Q, 2] normalized (x, y) (or [L, B, Q, 2]).

        Returns:
            logits [L, B, Q, K] and boxes [L, B, Q, 4] (normalized cxcywh): the centre is
            ``sigmoid(offset + inverse_sigmoid(reference))``, the size ``sigmoid(offset)``.
        """
        offsets = self.bbox_embed(hidden_states)
        centers = offsets[..., :2] + inverse_sigmoid(reference_points)
        outputs_coord = torch.cat([centers, offsets[..., 2:]], dim=-1).sigmoid()
        outputs_class = self.class_embed(hidden_states)
        return outputs_class, outputs_coord
