"""DAB-DETR detector (Liu et al. 2022), following detrex's ``projects/dab_detr`` module for module.

Single-scale: the last backbone feature (``res5``, stride 32) is projected to ``embed_dim`` by a 1x1
conv, encoded with sine positions, and decoded by 300 learned anchor boxes that each decoder layer
refines with the shared box head ``bbox_embed`` (registered twice: ``bbox_embed`` and
``transformer.decoder.bbox_embed``, so checkpoints hold both keys).

Extension points (used by KS-DETR, keep stable):
  - `transformer_inputs(images, img_masks, features, targets) -> dict`: extra keyword arguments for the
    transformer (baseline: ``{}``; ``targets`` is None in eval).
  - the transformer returns ``(hidden_states [L, B, Q, C], reference_boxes [L, B, Q, 4])`` with any L;
    `forward_raw` applies the heads to every entry: the last is ``pred_logits``/``pred_boxes``, the
    earlier ones are ``aux_outputs``.
"""

import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from detrex.layers import MLP, inverse_sigmoid
from detrex.modeling.detr_base import IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD, DETRBase
from detrex.structures import ImageList

__all__ = ["DABDETR"]


class DABDETR(DETRBase):
    """DAB-DETR.

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

    def __init__(
        self,
        backbone: nn.Module,
        in_features: Sequence[str],
        in_channels: int,
        position_embedding: nn.Module,
        transformer: nn.Module,
        embed_dim: int,
        num_classes: int,
        num_queries: int,
        criterion: nn.Module,
        aux_loss: bool = True,
        pixel_mean: Sequence[float] = IMAGENET_PIXEL_MEAN,
        pixel_std: Sequence[float] = IMAGENET_PIXEL_STD,
        freeze_anchor_box_centers: bool = True,
        select_box_nums_for_evaluation: int = 300,
        device: Optional[str] = None,
    ):
        super().__init__(
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            select_box_nums_for_evaluation=select_box_nums_for_evaluation,
            device=device,
        )
        self.backbone = backbone
        self.in_features = [str(f) for f in in_features]
        self.position_embedding = position_embedding
        self.input_proj = nn.Conv2d(in_channels, embed_dim, kernel_size=1)
        self.transformer = transformer
        self.anchor_box_embed = nn.Embedding(num_queries, 4)
        self.num_queries = num_queries
        self.class_embed = nn.Linear(embed_dim, num_classes)
        self.bbox_embed = MLP(embed_dim, embed_dim, 4, 3)
        self.num_classes = num_classes
        # The decoder refines anchors with the same box head (iterative update).
        self.transformer.decoder.bbox_embed = self.bbox_embed
        self.aux_loss = aux_loss
        self.criterion = criterion
        self.freeze_anchor_box_centers = freeze_anchor_box_centers
        self.init_weights()

    def init_weights(self):
        """Anchor centres uniform in [0, 1] (before sigmoid), class-bias prior 0.01, zero last box layer."""
        if self.freeze_anchor_box_centers:
            self.anchor_box_embed.weight.data[:, :2].uniform_(0, 1)
            self.anchor_box_embed.weight.data[:, :2] = inverse_sigmoid(self.anchor_box_embed.weight.data[:, :2])
            # Upstream then sets `requires_grad = False` on a slice of `.data`, which does nothing.
        prior_prob = 0.01
        nn.init.constant_(self.class_embed.bias, -math.log((1 - prior_prob) / prior_prob))
        nn.init.constant_(self.bbox_embed.layers[-1].weight, 0)
        nn.init.constant_(self.bbox_embed.layers[-1].bias, 0)

    def transformer_inputs(
        self, images: ImageList, img_masks: torch.Tensor, features: torch.Tensor, targets: Optional[List[Dict]]
    ) -> Dict:
        """Extra keyword arguments for ``self.transformer`` (and on to its encoder). Baseline: none.

        Args:
            images: the padded batch (``images.tensor`` (B, 3, H, W), ``images.image_sizes``).
            img_masks: (B, h, w) bool padding mask at feature resolution.
            features: (B, C, h, w) projected features.
            targets: `prepare_targets` output in training, None in eval.
        """
        return {}

    def predict(self, hidden_states: torch.Tensor, reference_boxes: torch.Tensor):
        """Heads on every decoder output: [L, B, Q, C], [L, B, Q, 4] -> logits [L, B, Q, K],
        boxes [L, B, Q, 4] (normalized cxcywh)."""
        outputs_coord = (inverse_sigmoid(reference_boxes) + self.bbox_embed(hidden_states)).sigmoid()
        outputs_class = self.class_embed(hidden_states)
        return outputs_class, outputs_coord

    def forward_raw(self, images: ImageList, targets: Optional[List[Dict]] = None) -> Dict:
        """Raw outputs: ``pred_logits`` (B, Q, K) logits and ``pred_boxes`` (B, Q, 4) normalized cxcywh of the
        last transformer output, plus ``aux_outputs`` for the earlier ones (if ``aux_loss``)."""
        img_masks = self.padding_mask(images)
        features = self.backbone(images.tensor)[self.in_features[-1]]
        features = self.input_proj(features)
        img_masks = self.downsample_mask(img_masks, features.shape[-2:])
        pos_embed = self.position_embedding(img_masks)
        extra = self.transformer_inputs(images, img_masks, features, targets)
        hidden_states, reference_boxes = self.transformer(
            features, img_masks, self.anchor_box_embed.weight, pos_embed, **extra
        )
        outputs_class, outputs_coord = self.predict(hidden_states, reference_boxes)
        output = self.pack_outputs(outputs_class, outputs_coord)
        return output
