"""`SingleScaleDETR`: the detector skeleton shared by the single-scale DETRs (Conditional-DETR, DAB-DETR, DN-DETR).

Following DETR (Carion et al. 2020) as refined by Conditional-DETR (Meng et al. 2021) and DAB-DETR (Liu et al.
2022): the last backbone feature (``res5``, stride 32) is projected to ``embed_dim`` by a 1x1 conv, given a sine
position embedding, and the transformer decodes ``num_queries`` learned queries (an ``nn.Embedding`` whose
name and width the subclass chooses); one class head (``class_embed``, Linear) and one box head (``bbox_embed``,
MLP(C, C, 4, 3)) predict from every decoder output.

Extension points (used by KS-DETR, keep stable):
  - `transformer_inputs(images, img_masks, features, targets) -> dict`: extra keyword arguments for the
    transformer (baseline: ``{}``; ``targets`` is None in eval).
  - `predict(hidden_states, references)`: the heads on every decoder output (each subclass's box
    parameterization).
  - the transformer returns ``(hidden_states [L, B, Q, C], references)`` with any L; `forward_raw` applies the
    heads to every entry: the last is ``pred_logits``/``pred_boxes``, the earlier ones are ``aux_outputs``.
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from detrex.layers import MLP
from detrex.modeling.detr_base import IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD, DETRBase
from detrex.structures import ImageList

__all__ = ["SingleScaleDETR"]


class SingleScaleDETR(DETRBase):
    """Single-scale DETR detector; subclasses set the learned queries and implement `predict`.

    Class attributes:
        query_embedding_name: attribute (and state-dict) name of the learned queries (``"query_embed"``).
        query_embedding_dim: their width (None: ``embed_dim``).

    Args:
        backbone: returns a dict of feature maps; ``in_features[-1]`` is used.
        in_features: backbone output names (the last, ``["res5"]``, is used).
        in_channels: channels of that feature (2048 for ResNet-50/101).
        position_embedding: e.g. ``PositionEmbeddingSine(128, normalize=True)``.
        transformer: called as ``transformer(features, img_masks, queries, pos_embed, **extra)``.
        embed_dim: transformer width.
        num_classes: number of classes (sigmoid logits, no background class).
        num_queries: number of learned queries.
        criterion: `SetCriterion` (or a subclass).
        aux_loss: supervise every decoder layer.
        pixel_mean, pixel_std, select_box_nums_for_evaluation, device: see `DETRBase`.

    Modules are registered in the detrex checkpoints' order: ``backbone``, ``position_embedding``,
    ``input_proj``, ``transformer``, the queries, ``class_embed``, ``bbox_embed``, ``criterion``.
    """

    query_embedding_name: str = "query_embed"
    query_embedding_dim: Optional[int] = None

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
        query_dim = embed_dim if self.query_embedding_dim is None else self.query_embedding_dim
        self.add_module(self.query_embedding_name, nn.Embedding(num_queries, query_dim))
        self.num_queries = num_queries
        self.class_embed = nn.Linear(embed_dim, num_classes)
        self.bbox_embed = MLP(embed_dim, embed_dim, 4, 3)
        self.num_classes = num_classes
        self.aux_loss = aux_loss
        self.criterion = criterion
        self.init_heads()

    def init_heads(self):
        """Class-bias prior 0.01, zero last box layer (the queries keep `nn.Embedding`'s N(0, 1) init)."""
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

    def predict(self, hidden_states: torch.Tensor, references: torch.Tensor):
        """Heads on every decoder output: hidden states [L, B, Q, C] and the transformer's references ->
        logits [L, B, Q, K] and boxes [L, B, Q, 4] (normalized cxcywh). Implemented by each detector."""
        raise NotImplementedError

    def image_features(self, images: ImageList) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Backbone + ``input_proj``: features (B, C, h, w), padding mask (B, h, w) bool (True = pad) and the
        position embedding (B, C, h, w)."""
        img_masks = self.padding_mask(images)
        features = self.backbone(images.tensor)[self.in_features[-1]]
        features = self.input_proj(features)
        img_masks = self.downsample_mask(img_masks, features.shape[-2:])
        pos_embed = self.position_embedding(img_masks)
        return features, img_masks, pos_embed

    def forward_raw(self, images: ImageList, targets: Optional[List[Dict]] = None) -> Dict:
        """Raw outputs: ``pred_logits`` (B, Q, K) logits and ``pred_boxes`` (B, Q, 4) normalized cxcywh of the
        last transformer output, plus ``aux_outputs`` for the earlier ones (if ``aux_loss``)."""
        features, img_masks, pos_embed = self.image_features(images)
        extra = self.transformer_inputs(images, img_masks, features, targets)
        queries = getattr(self, self.query_embedding_name).weight
        hidden_states, references = self.transformer(features, img_masks, queries, pos_embed, **extra)
        outputs_class, outputs_coord = self.predict(hidden_states, references)
        return self.pack_outputs(outputs_class, outputs_coord)
