"""DAB-DETR detector (Liu et al. 2022), following detrex's ``projects/dab_detr`` module for module.

Single-scale: the last backbone feature (``res5``, stride 32) is projected to ``embed_dim`` by a 1x1
conv, encoded with sine positions, and decoded by 300 learned anchor boxes that each decoder layer
refines with the shared box head ``bbox_embed`` (registered twice: ``bbox_embed`` and
``transformer.decoder.bbox_embed``, so checkpoints hold both keys).

Extension points (used by KS-DETR, keep stable; see `detrex.modeling.single_scale_detr`):
  - `transformer_inputs(images, img_masks, features, targets) -> dict`: extra keyword arguments for the
    transformer (baseline: ``{}``; ``targets`` is None in eval).
  - the transformer returns ``(hidden_states [L, B, Q, C], reference_boxes [L, B, Q, 4])`` with any L;
    `forward_raw` applies the heads to every entry: the last is ``pred_logits``/``pred_boxes``, the
    earlier ones are ``aux_outputs``.
"""

import torch

from detrex.layers import inverse_sigmoid
from detrex.modeling.single_scale_detr import SingleScaleDETR

__all__ = ["DABDETR"]


class DABDETR(SingleScaleDETR):
    """DAB-DETR: `SingleScaleDETR` whose queries are learned anchor boxes ``anchor_box_embed``
    [num_queries, 4] (before sigmoid), refined by every decoder layer with the shared box head.

    Args:
        backbone: returns a dict of feature maps; ``in_features[-1]`` is used.
        in_features: backbone output names (DAB-DETR uses the last, ``["res5"]``).
        in_channels: channels of that feature (2048 for ResNet-50/101).
        position_embedding: e.g. ``PositionEmbeddingSine(128, temperature=20, normalize=True)``.
        transformer: `DabDetrTransformer`.
        embed_dim: transformer width.
        num_classes: number of classes (sigmoid logits, no background class).
        num_queries: number of anchor boxes (``anchor_box_embed`` [num_queries, 4]).
        criterion: `SetCriterion`.
        aux_loss: supervise every decoder layer.
        pixel_mean, pixel_std, select_box_nums_for_evaluation, device: see `DETRBase`.
        freeze_anchor_box_centers: initialize anchor centres uniformly in [0, 1] (stored before sigmoid)
            and -- in intent -- freeze them. As in detrex, the freeze is a no-op (``requires_grad`` is
            set on a slice of ``.data``), so the centres still train; kept for AP parity.
    """

    query_embedding_name = "anchor_box_embed"
    query_embedding_dim = 4

    def __init__(self, *args, freeze_anchor_box_centers: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        # The decoder refines anchors with the same box head (iterative update).
        self.transformer.decoder.bbox_embed = self.bbox_embed
        self.freeze_anchor_box_centers = freeze_anchor_box_centers
        if freeze_anchor_box_centers:
            self.init_anchor_box_centers()

    def init_anchor_box_centers(self):
        """Anchor centres uniform in [0, 1], stored before sigmoid (the sizes keep N(0, 1))."""
        self.anchor_box_embed.weight.data[:, :2].uniform_(0, 1)
        self.anchor_box_embed.weight.data[:, :2] = inverse_sigmoid(self.anchor_box_embed.weight.data[:, :2])
        # Upstream then sets `requires_grad = False` on a slice of `.data`, which does nothing.

    def predict(self, hidden_states: torch.Tensor, reference_boxes: torch.Tensor):
        """Heads on every decoder output: [L, B, Q, C], [L, B, Q, 4] -> logits [L, B, Q, K],
        boxes [L, B, Q, 4] (normalized cxcywh)."""
        outputs_coord = (inverse_sigmoid(reference_boxes) + self.bbox_embed(hidden_states)).sigmoid()
        outputs_class = self.class_embed(hidden_states)
        return outputs_class, outputs_coord
