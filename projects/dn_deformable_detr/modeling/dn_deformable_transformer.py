"""DN-Deformable-DETR transformer (Li et al. 2022, DN-DETR's deformable variant; DAB-Deformable-DETR queries),
with detrex's module layout so detrex / KS-DETR checkpoints load.

Differences from Deformable-DETR's transformer (`projects.deformable_detr`): the queries are 4-d anchor boxes
(``input_box_query``, before sigmoid) with content queries given by the detector (denoising queries first in
training); the query position of decoder layer i is ``query_scale(x) * ref_point_head(sine(box))`` (no scale in
layer 0), where ``sine(box)`` is the 512-channel sine embedding of the valid-ratio-scaled reference box; the
decoder's self-attention takes the denoising attention mask; no ``reference_points`` projection.

The same four steps as `DeformableDetrTransformer` (`flatten_inputs`, `encode`, `prepare_queries`, `decode`)
are separately callable; `decode` depends only on its arguments (KS teachers pass their own memory).
"""

from typing import Dict, Optional

import torch

from detrex.layers import MLP, get_sine_pos_embed
from projects.deformable_detr.modeling.deformable_transformer import (
    DeformableDetrTransformer,
    DeformableDetrTransformerDecoder,
    DeformableDetrTransformerEncoder,
    MultiLevelInputs,
)

__all__ = ["DNDeformableDetrTransformerEncoder", "DNDeformableDetrTransformerDecoder", "DNDeformableDetrTransformer"]


class DNDeformableDetrTransformerEncoder(DeformableDetrTransformerEncoder):
    """Deformable-DETR's encoder (detrex gives it its own name for DN-Deformable-DETR)."""


class DNDeformableDetrTransformerDecoder(DeformableDetrTransformerDecoder):
    """Deformable decoder with DAB-style positional queries from the current reference boxes.

    Extra modules: ``query_scale`` MLP(C, C, C, 2) and ``ref_point_head`` MLP(2C, C, C, 2). The detector sets
    ``bbox_embed`` (per-layer heads; always box refinement).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        c = self.embed_dim
        self.query_scale = MLP(c, c, c, 2)
        self.ref_point_head = MLP(2 * c, c, c, 2)

    def layer_query_pos(self, layer_idx, output, reference_points_input, query_pos):
        """``query_scale(output) * ref_point_head(sine(ref))`` (scale 1 in layer 0); ``ref`` is the first level's
        (B, Q, 4) valid-ratio-scaled reference box, embedded with C/2 channels per coordinate."""
        sine = get_sine_pos_embed(reference_points_input[:, :, 0, :], num_pos_feats=self.embed_dim // 2)
        raw_query_pos = self.ref_point_head(sine)
        return raw_query_pos if layer_idx == 0 else self.query_scale(output) * raw_query_pos


class DNDeformableDetrTransformer(DeformableDetrTransformer):
    """Encoder + decoder of DN-Deformable-DETR.

    Args:
        encoder, decoder: `DNDeformableDetrTransformerEncoder` / `DNDeformableDetrTransformerDecoder`.
        as_two_stage: not supported (no released config uses it); must be False.
        num_feature_levels: L (``level_embeds`` [L, C]).
        two_stage_num_proposals: kept for config compatibility.

    ``forward(multi_level_feats, multi_level_masks, multi_level_pos_embeds, input_label_query, input_box_query,
    attn_masks=None, levels=None, **kwargs)`` returns ``(inter_states [L, B, Q', C], init_reference (B, Q', 4),
    inter_references [L, B, Q', 4], None, None)``. No ``reference_points`` projection (the anchors are the
    reference boxes).
    """

    learned_reference_points = False

    def __init__(self, encoder=None, decoder=None, as_two_stage=False, num_feature_levels=4,
                 two_stage_num_proposals=300):
        if as_two_stage:
            raise NotImplementedError("DNDeformableDetrTransformer: as_two_stage=True is not implemented; "
                                      "use projects.deformable_detr for two-stage Deformable-DETR")
        super().__init__(encoder, decoder, False, num_feature_levels, two_stage_num_proposals)

    def prepare_queries(self, memory: torch.Tensor, levels: MultiLevelInputs, input_label_query: torch.Tensor,
                        input_box_query: Optional[torch.Tensor] = None) -> Dict[str, Optional[torch.Tensor]]:
        """Content queries (B, Q', C) as given; reference boxes ``sigmoid(input_box_query)`` (B, Q', 4)."""
        if input_box_query is None or input_box_query.shape[-1] != 4:
            raise ValueError("DNDeformableDetrTransformer: input_box_query must be (B, Q, 4) anchors before sigmoid")
        return {
            "query": input_label_query,
            "query_pos": None,
            "reference_points": input_box_query.sigmoid(),
            "enc_outputs_class": None,
            "enc_outputs_coord_unact": None,
        }

    def decode(self, memory, levels, query, query_pos, reference_points, attn_masks=None, key=None):
        """As `DeformableDetrTransformer.decode`; the memory is also passed as ``key`` (as detrex)."""
        return super().decode(memory, levels, query, query_pos, reference_points, attn_masks=attn_masks,
                              key=memory if key is None else key)

    def forward(self, multi_level_feats, multi_level_masks, multi_level_pos_embeds, input_label_query,
                input_box_query, attn_masks=None, levels=None, **kwargs):
        """
        Args:
            multi_level_feats / multi_level_masks / multi_level_pos_embeds: per level (B, C, H, W) /
                (B, H, W) bool / (B, C, H, W).
            input_label_query: (B, Q', C) content queries (denoising queries first in training).
            input_box_query: (B, Q', 4) anchor boxes before sigmoid.
            attn_masks: ``[self_attn_mask (Q', Q') bool, None]`` (DN's group mask) or None.
            levels: the `flatten_inputs` result, if already computed.
            **kwargs: extra encoder inputs (KS-DETR).
        """
        if levels is None:
            levels = self.flatten_inputs(multi_level_feats, multi_level_masks, multi_level_pos_embeds)
        memory = self.encode(levels, **kwargs)
        q = self.prepare_queries(memory, levels, input_label_query, input_box_query)
        inter_states, inter_references = self.decode(memory, levels, q["query"], q["query_pos"],
                                                     q["reference_points"], attn_masks=attn_masks)
        return inter_states, q["reference_points"], inter_references, None, None
