"""`MultiScaleDETR`: what the multi-scale (deformable) DETRs share around their transformer.

Following Deformable-DETR (Zhu et al. 2021) and its DN variant (DN-DETR, Li et al. 2022): the backbone's
res3-res5 go through a neck (`ChannelMapper`) to ``embed_dim``-channel levels, each with its own padding mask
and sine position embedding; one class head (Linear) and one box head (MLP(C, C, 4, 3)) per decoder layer
predict box deltas relative to the reference the layer started from (`apply_box_deltas`).

The detectors (`projects.deformable_detr`, `projects.dn_deformable_detr`) build their own modules (their
state-dict orders differ) and use these pieces.
"""

import copy
import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from detrex.layers import inverse_sigmoid
from detrex.modeling.detr_base import DETRBase
from detrex.structures import ImageList

__all__ = ["MultiScaleDETR", "apply_box_deltas"]


def apply_box_deltas(deltas: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Normalized cxcywh boxes from head outputs (..., 4) and references (..., 2 | 4) in sigmoid space:
    ``sigmoid(deltas + inverse_sigmoid(reference))``, the reference shifting only (cx, cy) when it is 2-d."""
    reference = inverse_sigmoid(reference)
    if reference.shape[-1] == 4:
        return (deltas + reference).sigmoid()
    if reference.shape[-1] != 2:
        raise ValueError(f"reference must end in 2 (points) or 4 (boxes), got {tuple(reference.shape)}")
    return torch.cat([deltas[..., :2] + reference, deltas[..., 2:]], -1).sigmoid()


class MultiScaleDETR(DETRBase):
    """Base of the deformable detectors. A subclass registers ``backbone``, ``position_embedding``, ``neck``,
    ``transformer`` (with ``flatten_inputs`` and a ``decoder``), ``class_embed`` (Linear) and ``bbox_embed``
    (MLP), then calls `init_heads_and_neck` and, for per-layer heads, `build_per_layer_heads`.

    Extension points (used by KS-DETR, keep stable): `transformer_inputs` (extra encoder inputs) and
    `predict` (the per-layer heads of one decoder run).
    """

    def init_heads_and_neck(self):
        """Class-bias prior 0.01, zero last box layer, xavier-uniform neck convs with zero bias (detrex)."""
        prior_prob = 0.01
        nn.init.constant_(self.class_embed.bias, -math.log((1 - prior_prob) / prior_prob))
        nn.init.constant_(self.bbox_embed.layers[-1].weight, 0)
        nn.init.constant_(self.bbox_embed.layers[-1].bias, 0)
        for module in self.neck.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight, gain=1)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

    def build_per_layer_heads(self, num_pred: int):
        """Box refinement: ``num_pred`` independent copies of the class and box heads (``class_embed.{i}``,
        ``bbox_embed.{i}``), head 0's size bias set to -2 (as upstream), and the box heads registered as the
        decoder's refinement heads (``transformer.decoder.bbox_embed``, an alias in the state dict)."""
        self.class_embed = nn.ModuleList(copy.deepcopy(self.class_embed) for _ in range(num_pred))
        self.bbox_embed = nn.ModuleList(copy.deepcopy(self.bbox_embed) for _ in range(num_pred))
        nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
        self.transformer.decoder.bbox_embed = self.bbox_embed

    # ------------------------------------------------------------------ extension points
    def transformer_inputs(self, images: ImageList, multi_level_masks: List[torch.Tensor],
                           multi_level_feats: Sequence[torch.Tensor], levels, targets: Optional[List[Dict]]) -> Dict:
        """Extra keyword arguments for the encoder (and every encoder layer). Baseline: none.

        Args:
            images: the padded batch (``images.tensor`` (B, 3, H, W), ``images.image_sizes``).
            multi_level_masks: per level (B, H_l, W_l) bool padding masks.
            multi_level_feats: per level (B, C, H_l, W_l) neck outputs.
            levels: `MultiLevelInputs` of the transformer (``spatial_shapes`` (L, 2), ``level_start_index`` (L,),
                ``mask_flatten`` (B, N), ``feat_flatten`` (B, N, C), ...).
            targets: `prepare_targets` output in training, None in eval.
        """
        return {}

    def predict(self, inter_states: torch.Tensor, init_reference: torch.Tensor, inter_references: torch.Tensor):
        """Per-layer heads: states [L, B, Q, C] and references (initial (B, Q, 2|4), after each layer
        [L, B, Q, 2|4]) -> logits [L, B, Q, K] and boxes [L, B, Q, 4] (normalized cxcywh). Layer ``i`` uses
        head ``i`` and the reference it started from."""
        classes, coords = [], []
        for lvl in range(inter_states.shape[0]):
            reference = init_reference if lvl == 0 else inter_references[lvl - 1]
            classes.append(self.class_embed[lvl](inter_states[lvl]))
            coords.append(apply_box_deltas(self.bbox_embed[lvl](inter_states[lvl]), reference))
        return torch.stack(classes), torch.stack(coords)

    # ------------------------------------------------------------------ inputs
    def multi_level_inputs(self, images: ImageList):
        """Backbone + neck + per-level masks and positions: lists of features (B, C, H_l, W_l), padding masks
        (B, H_l, W_l) bool (True = pad) and position embeddings (B, C, H_l, W_l)."""
        img_masks = self.padding_mask(images)
        multi_level_feats = self.neck(self.backbone(images.tensor))
        multi_level_masks = [self.downsample_mask(img_masks, feat.shape[-2:]) for feat in multi_level_feats]
        multi_level_pos = [self.position_embedding(mask) for mask in multi_level_masks]
        return multi_level_feats, multi_level_masks, multi_level_pos
