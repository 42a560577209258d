"""Deformable-DETR detector (Zhu et al. 2021), following detrex's ``projects/deformable_detr`` module for module.

Multi-scale: ResNet res3-res5 are mapped to 256 channels by a `ChannelMapper` (1x1 conv + GroupNorm), which
adds a fourth, stride-64 level (3x3 stride-2 conv on res5). 300 learned queries (``query_embedding``
[300, 2C]: position and content) predict 2-d reference points. Options (as in the paper and detrex):

- ``with_box_refine``: one class/box head per decoder layer (``class_embed.{i}``, ``bbox_embed.{i}``), and the
  decoder refines its reference boxes layer by layer (``transformer.decoder.bbox_embed`` aliases the heads).
  Without it, one shared head is registered under the 6 names (checkpoints hold 6 copies of its keys).
- ``as_two_stage``: the encoder proposes boxes (one more head pair, index 6), the top-300 become the decoder's
  reference boxes and queries; the proposals are supervised class-agnostically (``*_enc`` losses).

Extension points (used by KS-DETR, keep stable):
  - `transformer_inputs(images, multi_level_masks, multi_level_feats, levels, targets) -> dict`: extra keyword
    arguments for the encoder; ``levels`` is the transformer's `MultiLevelInputs` (``spatial_shapes``,
    ``level_start_index``, ``mask_flatten`` (B, N), ...). Baseline: ``{}``; ``targets`` is None in eval.
  - `predict(inter_states, init_reference, inter_references)` applies the per-layer heads to one decoder run.
"""

from typing import Dict, List, Optional, Sequence

import torch.nn as nn

from detrex.layers import MLP
from detrex.modeling.detr_base import IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD
from detrex.modeling.multi_scale_detr import MultiScaleDETR, apply_box_deltas
from detrex.structures import ImageList

__all__ = ["DeformableDETR", "apply_box_deltas"]  # apply_box_deltas: re-exported from detrex.modeling.multi_scale_detr


class DeformableDETR(MultiScaleDETR):
    """Deformable-DETR.

    Args:
        backbone: returns a dict of feature maps (``res3``-``res5``).
        position_embedding: e.g. ``PositionEmbeddingSine(128, temperature=10000, normalize=True, offset=-0.5)``.
        neck: `ChannelMapper` returning ``num_feature_levels`` maps of ``embed_dim`` channels.
        transformer: `DeformableDetrTransformer`.
        embed_dim: transformer width C.
        num_classes: sigmoid classes (no background logit).
        num_queries: learned queries (``query_embedding`` [num_queries, 2C]; absent in two-stage mode).
        criterion: `DeformableCriterion`.
        pixel_mean, pixel_std, select_box_nums_for_evaluation, device: see `DETRBase`.
        aux_loss: supervise every decoder layer.
        with_box_refine: per-layer heads and iterative reference-box refinement.
        as_two_stage: encoder proposals as queries; needs ``with_box_refine`` (as upstream, whose two-stage
            config sets both: the proposal box head is the decoder's extra refinement head).
    """

    def __init__(
        self,
        backbone: nn.Module,
        position_embedding: nn.Module,
        neck: nn.Module,
        transformer: nn.Module,
        embed_dim: int,
        num_classes: int,
        num_queries: int,
        criterion: nn.Module,
        pixel_mean: Sequence[float] = IMAGENET_PIXEL_MEAN,
        pixel_std: Sequence[float] = IMAGENET_PIXEL_STD,
        aux_loss: bool = True,
        with_box_refine: bool = False,
        as_two_stage: bool = False,
        select_box_nums_for_evaluation: int = 300,
        device: Optional[str] = None,
    ):
        super().__init__(
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            select_box_nums_for_evaluation=select_box_nums_for_evaluation,
            device=device,
        )
        if as_two_stage and not with_box_refine:
            raise ValueError("DeformableDETR: as_two_stage=True needs with_box_refine=True (the proposal box head is "
                             "the decoder's extra refinement head; detrex's two-stage config sets both)")
        if bool(as_two_stage) != bool(getattr(transformer, "as_two_stage", False)):
            raise ValueError(f"DeformableDETR: as_two_stage={as_two_stage} but transformer.as_two_stage="
                             f"{getattr(transformer, 'as_two_stage', None)}; set both the same way")
        self.backbone = backbone
        self.position_embedding = position_embedding
        self.neck = neck
        self.num_queries = num_queries
        if not as_two_stage:
            self.query_embedding = nn.Embedding(num_queries, embed_dim * 2)
        self.transformer = transformer
        self.class_embed = nn.Linear(embed_dim, num_classes)
        self.bbox_embed = MLP(embed_dim, embed_dim, 4, 3)
        self.num_classes = num_classes
        self.aux_loss = aux_loss
        self.criterion = criterion
        self.with_box_refine = with_box_refine
        self.as_two_stage = as_two_stage
        self.init_heads_and_neck()

        # two-stage: one extra head pair (the last) scores and refines the encoder proposals
        num_pred = transformer.decoder.num_layers + (1 if as_two_stage else 0)
        if with_box_refine:
            self.build_per_layer_heads(num_pred)
        else:
            nn.init.constant_(self.bbox_embed.layers[-1].bias[2:], -2.0)
            # one shared module under num_pred names (checkpoints hold num_pred copies of its keys)
            self.class_embed = nn.ModuleList([self.class_embed] * num_pred)
            self.bbox_embed = nn.ModuleList([self.bbox_embed] * num_pred)
            self.transformer.decoder.bbox_embed = None
        if as_two_stage:
            self.transformer.decoder.class_embed = self.class_embed
            for box_embed in self.bbox_embed:
                nn.init.constant_(box_embed.layers[-1].bias[2:], 0.0)

    def forward_raw(self, images: ImageList, targets: Optional[List[Dict]] = None) -> Dict:
        """Raw outputs: ``pred_logits`` (B, Q, K), ``pred_boxes`` (B, Q, 4) normalized cxcywh of the last decoder
        layer, ``aux_outputs`` (earlier layers) and, in two-stage mode, ``enc_outputs`` (the proposals)."""
        feats, masks, poses = self.multi_level_inputs(images)
        levels = self.transformer.flatten_inputs(feats, masks, poses)
        extra = self.transformer_inputs(images, masks, feats, levels, targets)
        query_embeds = None if self.as_two_stage else self.query_embedding.weight
        inter_states, init_reference, inter_references, enc_class, enc_coord_unact = self.transformer(
            feats, masks, poses, query_embeds, levels=levels, **extra
        )
        outputs_class, outputs_coord = self.predict(inter_states, init_reference, inter_references)
        output = self.pack_outputs(outputs_class, outputs_coord)
        if self.as_two_stage:
            output["enc_outputs"] = {"pred_logits": enc_class, "pred_boxes": enc_coord_unact.sigmoid()}
        return output
