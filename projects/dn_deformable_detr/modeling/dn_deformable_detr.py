"""DN-Deformable-DETR detector (Li et al. 2022), following detrex's ``projects/dn_deformable_detr``.

Deformable-DETR's backbone, neck and encoder; 300 learned anchor boxes (``refpoint_embed`` [300, 4], before
sigmoid) with learned content queries (``tgt_embed`` [300, C - 1] plus an indicator channel 0); box
refinement with one class/box head per decoder layer (``transformer.decoder.bbox_embed`` aliases the box
heads, so checkpoints hold both names). Training adds DN-DETR's denoising queries in front of the matching
queries (`detrex.layers.denoising.GenerateDNQueries`, registered as ``denoising_generator``), and
`DNCriterion` supervises both parts. Eval needs no ground truth and has no denoising queries.

Extension points (used by KS-DETR, keep stable): `transformer_inputs(images, multi_level_masks,
multi_level_feats, levels, targets)` (extra encoder inputs, see `DeformableDETR`), `build_queries(batch_size,
targets)` (the decoder's content/box queries and attention mask, shared by all decoder passes) and
`predict(...)` (heads of one decoder run).
"""

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from detrex.layers import MLP, inverse_sigmoid
from detrex.layers.denoising import GenerateDNQueries
from detrex.modeling.detr_base import IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD
from detrex.modeling.multi_scale_detr import MultiScaleDETR
from detrex.structures import ImageList

__all__ = ["DNDeformableDETR"]


class DNDeformableDETR(MultiScaleDETR):
    """DN-Deformable-DETR.

    Args:
        backbone, position_embedding, neck: as `DeformableDETR`.
        transformer: `DNDeformableDetrTransformer`.
        embed_dim: transformer width C.
        num_classes: sigmoid classes.
        num_queries: matching queries Q.
        criterion: `DNCriterion`.
        pixel_mean, pixel_std, select_box_nums_for_evaluation, device: see `DETRBase`.
        aux_loss: supervise every decoder layer.
        as_two_stage: not supported (must be False).
        denoising_groups: noised copies of the ground truth (5).
        label_noise_prob: probability of replacing a denoising label (0.2; drawn from the 81 label-encoder rows).
        box_noise_scale: relative box jitter of the denoising boxes (0.4).
        with_indicator: the content queries' last channel flags denoising (1) vs matching (0) queries.
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
        as_two_stage: bool = False,
        denoising_groups: int = 5,
        label_noise_prob: float = 0.2,
        box_noise_scale: float = 0.4,
        with_indicator: bool = True,
        select_box_nums_for_evaluation: int = 300,
        device: Optional[str] = None,
    ):
        super().__init__(
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            select_box_nums_for_evaluation=select_box_nums_for_evaluation,
            device=device,
        )
        if as_two_stage:
            raise NotImplementedError("DNDeformableDETR: as_two_stage=True is not implemented")
        self.backbone = backbone
        self.position_embedding = position_embedding
        self.neck = neck
        self.num_queries = num_queries
        self.with_indicator = with_indicator
        self.tgt_embed = nn.Embedding(num_queries, embed_dim - 1 if with_indicator else embed_dim)
        self.refpoint_embed = nn.Embedding(num_queries, 4)
        self.transformer = transformer
        self.class_embed = nn.Linear(embed_dim, num_classes)
        self.bbox_embed = MLP(embed_dim, embed_dim, 4, 3)
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.as_two_stage = False
        self.aux_loss = aux_loss
        self.criterion = criterion
        self.denoising_groups = denoising_groups
        self.label_noise_prob = label_noise_prob
        self.box_noise_scale = box_noise_scale
        self._init_weights()

        self.build_per_layer_heads(transformer.decoder.num_layers)  # always box refinement
        # registered last, as upstream (state-dict order)
        self.denoising_generator = GenerateDNQueries(
            num_queries=num_queries,
            num_classes=num_classes + 1,  # the last row is "no object"
            label_embed_dim=embed_dim,
            denoising_groups=denoising_groups,
            label_noise_prob=label_noise_prob,
            box_noise_scale=box_noise_scale,
            with_indicator=with_indicator,
        )

    def _init_weights(self):
        """Zero content queries; anchors uniform in [0, 1], stored as clamp(inverse_sigmoid, -3, 3); class-bias prior
        0.01; zero last box layer; xavier-uniform neck convs (detrex)."""
        nn.init.zeros_(self.tgt_embed.weight)
        nn.init.uniform_(self.refpoint_embed.weight)
        with torch.no_grad():
            self.refpoint_embed.weight.copy_(inverse_sigmoid(self.refpoint_embed.weight).clamp(-3, 3))
        self.init_heads_and_neck()

    def build_queries(self, batch_size: int, targets: Optional[List[Dict]]) -> Dict:
        """The decoder's queries.

        Returns a dict: ``label_query`` (B, Q', C) content queries, ``box_query`` (B, Q', 4) anchors before
        sigmoid, ``attn_mask`` (Q', Q') bool (True = blocked) or None, ``denoising_groups`` G,
        ``max_gt_num_per_image`` M. In training (``targets`` given) the G*M denoising queries come first.
        """
        label_query = self.tgt_embed.weight
        if self.with_indicator:
            label_query = torch.cat([label_query, label_query.new_zeros(self.num_queries, 1)], 1)
        label_query = label_query.unsqueeze(0).repeat(batch_size, 1, 1)
        box_query = self.refpoint_embed.weight.unsqueeze(0).repeat(batch_size, 1, 1)
        if targets is None:
            return {"label_query": label_query, "box_query": box_query, "attn_mask": None,
                    "denoising_groups": self.denoising_groups, "max_gt_num_per_image": 0}
        dn_labels, dn_boxes, attn_mask, groups, max_gt = self.denoising_generator(
            [t["labels"] for t in targets], [t["boxes"] for t in targets]
        )
        return {
            "label_query": torch.cat([dn_labels, label_query], 1),
            "box_query": torch.cat([dn_boxes, box_query], 1),
            "attn_mask": attn_mask,
            "denoising_groups": groups,
            "max_gt_num_per_image": max_gt,
        }

    def forward_raw(self, images: ImageList, targets: Optional[List[Dict]] = None) -> Dict:
        """Raw outputs of the matching queries -- ``pred_logits`` (B, Q, K), ``pred_boxes`` (B, Q, 4)
        normalized cxcywh, ``aux_outputs`` -- and ``denoising_output`` (same layout over the G*M denoising
        queries; None in eval), ``denoising_groups`` and ``max_gt_num_per_image``."""
        feats, masks, poses = self.multi_level_inputs(images)
        levels = self.transformer.flatten_inputs(feats, masks, poses)
        extra = self.transformer_inputs(images, masks, feats, levels, targets)
        queries = self.build_queries(images.tensor.shape[0], targets)  # a traced size when exporting
        inter_states, init_reference, inter_references, _, _ = self.transformer(
            feats, masks, poses, queries["label_query"], queries["box_query"],
            attn_masks=[queries["attn_mask"], None], levels=levels, **extra,
        )
        outputs_class, outputs_coord = self.predict(inter_states, init_reference, inter_references)
        return self.pack_dn_outputs(outputs_class, outputs_coord, queries["denoising_groups"],
                                    queries["max_gt_num_per_image"])
