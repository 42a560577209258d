"""Conditional-DETR detector (Meng et al. 2021), following detrex's ``projects/conditional_detr`` module for
module.

Single-scale: the last backbone feature (``res5``, stride 32) is projected to ``embed_dim`` by a 1x1 conv,
encoded with sine positions (temperature 10000), and decoded by 300 learned query embeddings
(``query_embed``), each with a fixed 2-d reference point. The box head predicts (cx, cy) as offsets to the
reference point in inverse-sigmoid space and (w, h) directly; there is no iterative refinement.

Extension points (for KS-DETR, the same as `DABDETR`'s):
  - `transformer_inputs(images, img_masks, features, targets) -> dict`: extra keyword arguments for the
    transformer (baseline: ``{}``; ``targets`` is None in eval).
  - the transformer returns ``(hidden_states [L, B, Q, C], reference_points [B, Q, 2])`` with any L;
    `forward_raw` applies the heads to every entry (all with the same reference points): the last is
    ``pred_logits``/``pred_boxes``, the earlier ones are ``aux_outputs``.
"""

import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from detrex.layers import MLP, inverse_sigmoid
from detrex.modeling.detr_base import IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD, DETRBase
from detrex.structures import ImageList

__all__ = ["ConditionalDETR"]


class ConditionalDETR(DETRBase):
    """Conditional-DETR.

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
        self.query_embed = nn.Embedding(num_queries, embed_dim)
        self.num_queries = num_queries
        self.class_embed = nn.Linear(embed_dim, num_classes)
        self.bbox_embed = MLP(embed_dim, embed_dim, 4, 3)
        self.num_classes = num_classes
        self.aux_loss = aux_loss
        self.criterion = criterion
        self.init_weights()

    def init_weights(self):
        """Class-bias prior 0.01, zero last box layer (``query_embed`` keeps its N(0, 1) init)."""
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

    def forward_raw(self, images: ImageList, targets: Optional[List[Dict]] = None) -> Dict:
        """Raw outputs: ``pred_logits`` (B, Q, K) logits and ``pred_boxes`` (B, Q, 4) normalized cxcywh of the
        last transformer output, plus ``aux_outputs`` for the earlier ones (if ``aux_loss``)."""
        img_masks = self.padding_mask(images)
        features = self.backbone(images.tensor)[self.in_features[-1]]
        features = self.input_proj(features)
        img_masks = self.downsample_mask(img_masks, features.shape[-2:])
        pos_embed = self.position_embedding(img_masks)
        extra = self.transformer_inputs(images, img_masks, features, targets)
        hidden_states, reference_points = self.transformer(
            features, img_masks, self.query_embed.weight, pos_embed, **extra
        )
        outputs_class, outputs_coord = self.predict(hidden_states, reference_points)
        output = self.pack_outputs(outputs_class, outputs_coord)
        return output
