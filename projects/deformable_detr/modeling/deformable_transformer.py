"""Deformable-DETR transformer (Zhu et al. 2021, "Deformable DETR: Deformable Transformers for End-to-End
Object Detection"), with detrex's module layout so detrex / KS-DETR checkpoints load.

Shapes are batch-first. Multi-level tokens are flattened level-major, row-major within a level:
``N = sum_l H_l * W_l`` (e.g. 40x52 + 20x26 + 10x13 + 5x7 for a 320x416 batch). Reference points are
normalized to the *valid* (unpadded) part of each image; boxes are normalized cxcywh.

The transformer runs in four separately callable steps, so KS-DETR can insert GT-dependent inputs and
decode several memories with identical decoder inputs:

1. `DeformableDetrTransformer.flatten_inputs` -> `MultiLevelInputs` (tokens, padding mask (B, N),
   positions, ``spatial_shapes``, ``level_start_index``, ``valid_ratios``, encoder reference points);
2. `encode(levels, **kwargs)` -> memory (B, N, C) (kwargs reach every encoder layer and its attention);
3. `prepare_queries(memory, levels, query_embed)` -> the decoder's queries, query positions and reference
   points (plus the encoder proposals in two-stage mode);
4. `decode(memory, levels, query, query_pos, reference_points)` -> per-layer states and references; it
   depends only on its arguments (KS teachers call it with ``memory=teacher_memory``).
"""

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from detrex.layers import (
    FFN,
    BaseTransformerLayer,
    MultiheadAttention,
    MultiScaleDeformableAttention,
    TransformerLayerSequence,
    inverse_sigmoid,
)
from detrex.layers.detr_transformer import DetrEncoder
from detrex.utils.transfer import host_tensor

__all__ = [
    "MultiLevelInputs",
    "DeformableDetrTransformerEncoder",
    "DeformableDetrTransformerDecoder",
    "DeformableDetrTransformer",
]


@dataclass
class MultiLevelInputs:
    """The flattened multi-level encoder input and its geometry (all batch-first).

    Attributes:
        feat_flatten: (B, N, C) tokens, level-major then row-major.
        mask_flatten: (B, N) bool, True at padded tokens.
        pos_flatten: (B, N, C) sine position embedding plus the level embedding.
        spatial_shapes: (L, 2) int64 ``(H_l, W_l)``.
        level_start_index: (L,) int64 offset of each level in N.
        valid_ratios: (B, L, 2) float, the valid (unpadded) fraction ``(w, h)`` of each level.
        reference_points: (B, N, L, 2) normalized ``(x, y)`` of every token's centre, as seen from each
            level (the encoder's reference points).
        spatial_sizes: ``[(H_l, W_l)]`` as Python ints (known on the host: no read of ``spatial_shapes``).
    """

    feat_flatten: torch.Tensor
    mask_flatten: torch.Tensor
    pos_flatten: torch.Tensor
    spatial_shapes: torch.Tensor
    level_start_index: torch.Tensor
    valid_ratios: torch.Tensor
    reference_points: torch.Tensor
    spatial_sizes: List[Tuple[int, int]]

    @property
    def level_sizes(self) -> List[Tuple[int, int]]:
        """``[(H_l, W_l)]`` as Python ints."""
        return list(self.spatial_sizes)


def _check_layers(layers: Sequence[nn.Module], owner: str) -> None:
    if len(layers) == 0:
        raise ValueError(f"{owner}: needs at least one layer")


class DeformableDetrTransformerEncoder(DetrEncoder):
    """Encoder of post-norm layers: multi-scale deformable self-attention -> norm -> FFN -> norm.

    Args:
        embed_dim, num_heads: width and heads (8 heads x 4 levels x 4 points).
        feedforward_dim: FFN hidden width (Deformable-DETR 1024, DN-Deformable-DETR 2048).
        attn_dropout, ffn_dropout: dropout of the attention output and inside the FFN.
        num_layers: number of layers.
        post_norm: add a final LayerNorm (not used by the configs).
        num_feature_levels: levels L.
        operation_order: the layer's operation order.
        layers: a ready list of layer modules with the same call signature instead of ``num_layers``
            copies (how KS-DETR swaps in its multi-scale triple-attention last layer).
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        feedforward_dim: int = 1024,
        attn_dropout: float = 0.1,
        ffn_dropout: float = 0.1,
        num_layers: int = 6,
        post_norm: bool = False,
        num_feature_levels: int = 4,
        operation_order: Tuple[str, ...] = ("self_attn", "norm", "ffn", "norm"),
        layers: Optional[Sequence[nn.Module]] = None,
    ):
        if layers is None:
            layers = BaseTransformerLayer(
                attn=MultiScaleDeformableAttention(
                    embed_dim=embed_dim,
                    num_heads=num_heads,
                    dropout=attn_dropout,
                    batch_first=True,
                    num_levels=num_feature_levels,
                ),
                ffn=FFN(embed_dim=embed_dim, feedforward_dim=feedforward_dim, output_dim=embed_dim,
                        num_fcs=2, ffn_drop=ffn_dropout),
                norm=nn.LayerNorm(embed_dim),
                operation_order=operation_order,
            )
        else:
            _check_layers(layers, type(self).__name__)
        super().__init__(transformer_layers=layers, num_layers=num_layers if isinstance(layers, nn.Module) else None)
        self.embed_dim = embed_dim
        self.pre_norm = getattr(self.layers[0], "pre_norm", False)
        self.post_norm_layer = nn.LayerNorm(embed_dim) if post_norm else None
        # forward: `DetrEncoder`'s, on batch-first tokens (B, N, C); ``reference_points``, ``spatial_shapes``,
        # ``level_start_index``, ``valid_ratios`` and any extra keyword arguments go to every layer


class DeformableDetrTransformerDecoder(TransformerLayerSequence):
    """Decoder of post-norm layers: self-attention (``nn.MultiheadAttention``) -> norm -> multi-scale
    deformable cross-attention -> norm -> FFN -> norm.

    With ``bbox_embed`` set (a ModuleList, one head per layer; the detector registers it for box
    refinement) every layer refines the reference points: ``sigmoid(bbox_embed[i](q) + inverse_sigmoid(ref))``
    (2-d points become boxes after the first layer), detached before the next layer. Without it the
    reference points stay the initial ones.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        feedforward_dim: int = 1024,
        attn_dropout: float = 0.1,
        ffn_dropout: float = 0.1,
        num_layers: int = 6,
        return_intermediate: bool = True,
        num_feature_levels: int = 4,
    ):
        layer = BaseTransformerLayer(
            attn=[
                MultiheadAttention(embed_dim=embed_dim, num_heads=num_heads, attn_drop=attn_dropout, batch_first=True),
                MultiScaleDeformableAttention(
                    embed_dim=embed_dim,
                    num_heads=num_heads,
                    dropout=attn_dropout,
                    batch_first=True,
                    num_levels=num_feature_levels,
                ),
            ],
            ffn=FFN(embed_dim=embed_dim, feedforward_dim=feedforward_dim, output_dim=embed_dim, ffn_drop=ffn_dropout),
            norm=nn.LayerNorm(embed_dim),
            operation_order=("self_attn", "norm", "cross_attn", "norm", "ffn", "norm"),
        )
        super().__init__(transformer_layers=layer, num_layers=num_layers)
        self.embed_dim = embed_dim
        self.return_intermediate = return_intermediate
        self.bbox_embed = None  # per-layer box heads (box refinement), set by the detector
        self.class_embed = None  # class heads (two-stage proposals), set by the detector

    def layer_query_pos(self, layer_idx: int, output, reference_points_input, query_pos):
        """Positional query of layer ``layer_idx``. Deformable-DETR: the fixed ``query_pos``."""
        return query_pos

    def forward(
        self,
        query,
        key=None,
        value=None,
        query_pos=None,
        key_pos=None,
        attn_masks=None,
        query_key_padding_mask=None,
        key_padding_mask=None,
        reference_points=None,
        valid_ratios=None,
        **kwargs,
    ):
        """
        Args:
            query: (B, Q, C) content queries; query_pos: (B, Q, C) or None.
            value: (B, N, C) memory; key: passed through (unused by the deformable attention).
            attn_masks: ``[self_attn_mask (Q, Q) bool True = blocked, None]`` or None.
            key_padding_mask: (B, N) memory padding mask.
            reference_points: (B, Q, 2) points or (B, Q, 4) boxes, normalized to the valid image.
            valid_ratios: (B, L, 2).
            **kwargs: ``spatial_shapes``, ``level_start_index`` (and anything else) for the attentions.

        Returns:
            states [L, B, Q, C] and the reference points after each layer [L, B, Q, 2 or 4] (with
            ``return_intermediate``; else the last layer's, without the leading dim).
        """
        if reference_points is None or reference_points.shape[-1] not in (2, 4):
            raise ValueError("DeformableDetrTransformerDecoder: reference_points must be (B, Q, 2) or (B, Q, 4)")
        output = query
        intermediate, intermediate_reference_points = [], []
        for layer_idx, layer in enumerate(self.layers):
            if reference_points.shape[-1] == 4:
                scale = torch.cat([valid_ratios, valid_ratios], -1)[:, None]
            else:
                scale = valid_ratios[:, None]
            reference_points_input = reference_points[:, :, None] * scale  # (B, Q, L, 2|4)
            layer_pos = self.layer_query_pos(layer_idx, output, reference_points_input, query_pos)
            output = layer(
                output,
                key,
                value,
                query_pos=layer_pos,
                key_pos=key_pos,
                attn_masks=attn_masks,
                query_key_padding_mask=query_key_padding_mask,
                key_padding_mask=key_padding_mask,
                reference_points=reference_points_input,
                **kwargs,
            )
            if self.bbox_embed is not None:
                delta = self.bbox_embed[layer_idx](output)
                if reference_points.shape[-1] == 4:
                    new_reference_points = delta + inverse_sigmoid(reference_points)
                else:
                    new_reference_points = torch.cat(
                        [delta[..., :2] + inverse_sigmoid(reference_points), delta[..., 2:]], -1
                    )
                reference_points = new_reference_points.sigmoid().detach()
            if self.return_intermediate:
                intermediate.append(output)
                intermediate_reference_points.append(reference_points)
        if self.return_intermediate:
            return torch.stack(intermediate), torch.stack(intermediate_reference_points)
        return output, reference_points


def _sine_embed_boxes(boxes_unact: torch.Tensor, num_pos_feats: int = 128, temperature: int = 10000) -> torch.Tensor:
    """Sine embedding of unactivated proposals (B, Q, 4) -> (B, Q, 4 * num_pos_feats), coordinates in order
    (x, y, w, h), each as interleaved sin/cos of ``sigmoid(v) * 2 pi / temperature^(2i/F)``."""
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=boxes_unact.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    pos = boxes_unact.sigmoid()[..., None] * (2 * math.pi) / dim_t  # (B, Q, 4, F)
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(2)


class DeformableDetrTransformer(nn.Module):
    """Encoder + decoder of Deformable-DETR.

    Args:
        encoder, decoder: `DeformableDetrTransformerEncoder` / `DeformableDetrTransformerDecoder`.
        as_two_stage: queries come from the top-``two_stage_num_proposals`` encoder proposals (scored by
            ``decoder.class_embed[-1]`` and refined by ``decoder.bbox_embed[-1]``, both set by the detector)
            instead of ``query_embed``.
        num_feature_levels: L (``level_embeds`` [L, C]).
        two_stage_num_proposals: number of proposals kept in two-stage mode.

    Class attribute ``learned_reference_points``: one-stage queries get 2-d reference points from the
    ``reference_points`` Linear (False in subclasses whose queries carry their own anchors).

    ``forward(multi_level_feats, multi_level_masks, multi_level_pos_embeds, query_embed, levels=None, **kwargs)``
    returns ``(inter_states [L, B, Q, C], init_reference (B, Q, 2|4), inter_references [L, B, Q, 2|4],
    enc_outputs_class, enc_outputs_coord_unact)`` (the last two None unless two-stage), as detrex.
    """

    learned_reference_points = True

    def __init__(
        self,
        encoder: nn.Module = None,
        decoder: nn.Module = None,
        as_two_stage: bool = False,
        num_feature_levels: int = 4,
        two_stage_num_proposals: int = 300,
    ):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.as_two_stage = as_two_stage
        self.num_feature_levels = num_feature_levels
        self.two_stage_num_proposals = two_stage_num_proposals
        self.embed_dim = self.encoder.embed_dim
        self.level_embeds = nn.Parameter(torch.empty(num_feature_levels, self.embed_dim))
        if as_two_stage:
            self.enc_output = nn.Linear(self.embed_dim, self.embed_dim)
            self.enc_output_norm = nn.LayerNorm(self.embed_dim)
            self.pos_trans = nn.Linear(self.embed_dim * 2, self.embed_dim * 2)
            self.pos_trans_norm = nn.LayerNorm(self.embed_dim * 2)
        elif self.learned_reference_points:
            self.reference_points = nn.Linear(self.embed_dim, 2)
        self.init_weights()

    def init_weights(self):
        """Xavier-uniform for every matrix, the deformable attentions' own init, xavier-normal reference-point
        projection (if any) with zero bias, N(0, 1) level embeddings (detrex)."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.init_weights()
        if not self.as_two_stage and self.learned_reference_points:
            nn.init.xavier_normal_(self.reference_points.weight, gain=1.0)
            nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embeds)

    # ------------------------------------------------------------------ geometry
    @staticmethod
    def get_valid_ratio(mask: torch.Tensor) -> torch.Tensor:
        """(B, H, W) padding mask -> (B, 2) valid fraction ``(w, h)`` (from the first row / column)."""
        _, h, w = mask.shape
        valid_h = torch.sum(~mask[:, :, 0], 1)
        valid_w = torch.sum(~mask[:, 0, :], 1)
        return torch.stack([valid_w.float() / w, valid_h.float() / h], -1)

    @staticmethod
    def get_reference_points(level_sizes, valid_ratios: torch.Tensor, device) -> torch.Tensor:
        """Encoder reference points (B, N, L, 2): each token's pixel centre, normalized by its level's valid
        size, then re-scaled to every level's valid ratio."""
        points = []
        for lvl, (h, w) in enumerate(level_sizes):
            # arange(0.5, h) equals linspace(0.5, h - 0.5, h) exactly and traces with a dynamic h (ONNX export)
            ref_y, ref_x = torch.meshgrid(
                torch.arange(0.5, h, dtype=torch.float32, device=device),
                torch.arange(0.5, w, dtype=torch.float32, device=device),
                indexing="ij",
            )
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
            points.append(torch.stack((ref_x, ref_y), -1))
        reference_points = torch.cat(points, 1)
        return reference_points[:, :, None] * valid_ratios[:, None]

    def flatten_inputs(self, multi_level_feats, multi_level_masks, multi_level_pos_embeds) -> MultiLevelInputs:
        """Lists of (B, C, H_l, W_l) features, (B, H_l, W_l) bool masks and (B, C, H_l, W_l) positions ->
        `MultiLevelInputs`."""
        if not (len(multi_level_feats) == len(multi_level_masks) == len(multi_level_pos_embeds)
                == self.num_feature_levels):
            raise ValueError(
                f"{type(self).__name__}: expected {self.num_feature_levels} feature levels (num_feature_levels), got "
                f"{len(multi_level_feats)} features, {len(multi_level_masks)} masks, {len(multi_level_pos_embeds)} "
                "position embeddings; check the neck's num_outs"
            )
        feats, masks, poses, sizes = [], [], [], []
        for lvl, (feat, mask, pos) in enumerate(zip(multi_level_feats, multi_level_masks, multi_level_pos_embeds)):
            _, _, h, w = feat.shape
            sizes.append((h, w))
            feats.append(feat.flatten(2).transpose(1, 2))
            masks.append(mask.flatten(1))
            poses.append(pos.flatten(2).transpose(1, 2) + self.level_embeds[lvl].view(1, 1, -1))
        device = feats[0].device
        if torch.jit.is_tracing():
            # the sizes are traced 0-dim tensors: stack them so the exported graph follows the input size
            spatial_shapes = torch.stack([torch.stack([torch.as_tensor(h), torch.as_tensor(w)]) for h, w in sizes])
            spatial_shapes = spatial_shapes.to(device=device, dtype=torch.long)
        else:
            spatial_shapes = host_tensor(sizes, torch.long, device)  # no host sync on a GPU
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        valid_ratios = torch.stack([self.get_valid_ratio(m) for m in multi_level_masks], 1)
        return MultiLevelInputs(
            feat_flatten=torch.cat(feats, 1),
            mask_flatten=torch.cat(masks, 1),
            pos_flatten=torch.cat(poses, 1),
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
            valid_ratios=valid_ratios,
            reference_points=self.get_reference_points(sizes, valid_ratios, device),
            spatial_sizes=sizes,
        )

    # ------------------------------------------------------------------ steps
    def encode(self, levels: MultiLevelInputs, **kwargs) -> torch.Tensor:
        """Memory (B, N, C). ``kwargs`` go to the encoder, every layer and its attention (KS: token masks)."""
        return self.encoder(
            query=levels.feat_flatten,
            key=None,
            value=None,
            query_pos=levels.pos_flatten,
            query_key_padding_mask=levels.mask_flatten,
            spatial_shapes=levels.spatial_shapes,
            reference_points=levels.reference_points,
            level_start_index=levels.level_start_index,
            valid_ratios=levels.valid_ratios,
            spatial_sizes=levels.spatial_sizes,
            **kwargs,
        )

    def gen_encoder_output_proposals(self, memory, memory_padding_mask, level_sizes):
        """Two-stage proposals: one box per token (its cell centre, size 0.05 * 2^l), unactivated, +inf where
        padded or too close to the border, and the transformed memory ``enc_output_norm(enc_output(memory))``
        with those tokens zeroed. Returns (B, N, C), (B, N, 4)."""
        n = memory.shape[0]
        proposals, start = [], 0
        for lvl, (h, w) in enumerate(level_sizes):
            mask = memory_padding_mask[:, start:start + h * w].view(n, h, w)
            valid_h = torch.sum(~mask[:, :, 0], 1)
            valid_w = torch.sum(~mask[:, 0, :], 1)
            grid_y, grid_x = torch.meshgrid(  # = linspace(0, h - 1, h), traceable with a dynamic h
                torch.arange(h, dtype=torch.float32, device=memory.device),
                torch.arange(w, dtype=torch.float32, device=memory.device),
                indexing="ij",
            )
            grid = torch.stack([grid_x, grid_y], -1)
            scale = torch.stack([valid_w, valid_h], 1).view(n, 1, 1, 2)
            grid = (grid.unsqueeze(0).expand(n, -1, -1, -1) + 0.5) / scale
            wh = torch.ones_like(grid) * 0.05 * (2.0 ** lvl)
            proposals.append(torch.cat((grid, wh), -1).view(n, -1, 4))
            start += h * w
        output_proposals = torch.cat(proposals, 1)
        valid = ((output_proposals > 0.01) & (output_proposals < 0.99)).all(-1, keepdim=True)
        output_proposals = torch.log(output_proposals / (1 - output_proposals))
        output_proposals = output_proposals.masked_fill(memory_padding_mask.unsqueeze(-1), float("inf"))
        output_proposals = output_proposals.masked_fill(~valid, float("inf"))
        output_memory = memory.masked_fill(memory_padding_mask.unsqueeze(-1), 0.0).masked_fill(~valid, 0.0)
        return self.enc_output_norm(self.enc_output(output_memory)), output_proposals

    def prepare_queries(self, memory: torch.Tensor, levels: MultiLevelInputs,
                        query_embed: Optional[torch.Tensor]) -> Dict[str, Optional[torch.Tensor]]:
        """Decoder inputs.

        One-stage: ``query_embed`` (Q, 2C) splits into query position and content; reference points are
        ``sigmoid(reference_points(query_pos))`` (B, Q, 2). Two-stage: the top-k encoder proposals give
        reference boxes (B, k, 4) and, through ``pos_trans``, the query position and content.

        Returns a dict: ``query``, ``query_pos`` (B, Q, C), ``reference_points``, ``enc_outputs_class``,
        ``enc_outputs_coord_unact`` (two-stage only, else None).
        """
        bs, _, c = memory.shape
        if self.as_two_stage:
            if self.decoder.class_embed is None or self.decoder.bbox_embed is None:
                raise RuntimeError("DeformableDetrTransformer: two-stage needs decoder.class_embed and "
                                   "decoder.bbox_embed (set by DeformableDETR with as_two_stage and with_box_refine)")
            output_memory, output_proposals = self.gen_encoder_output_proposals(
                memory, levels.mask_flatten, levels.level_sizes
            )
            enc_outputs_class = self.decoder.class_embed[self.decoder.num_layers](output_memory)
            enc_outputs_coord_unact = self.decoder.bbox_embed[self.decoder.num_layers](output_memory) + output_proposals
            topk = min(self.two_stage_num_proposals, enc_outputs_class.shape[1])
            topk_proposals = torch.topk(enc_outputs_class[..., 0], topk, dim=1)[1]
            topk_coords_unact = torch.gather(
                enc_outputs_coord_unact, 1, topk_proposals.unsqueeze(-1).expand(-1, -1, 4)
            ).detach()
            pos_trans_out = self.pos_trans_norm(self.pos_trans(_sine_embed_boxes(topk_coords_unact, c // 2)))
            query_pos, query = torch.split(pos_trans_out, c, dim=2)
            return {
                "query": query,
                "query_pos": query_pos,
                "reference_points": topk_coords_unact.sigmoid(),
                "enc_outputs_class": enc_outputs_class,
                "enc_outputs_coord_unact": enc_outputs_coord_unact,
            }
        if query_embed is None:
            raise ValueError("DeformableDetrTransformer: query_embed (Q, 2C) is required unless as_two_stage")
        query_pos, query = torch.split(query_embed, c, dim=1)
        query_pos = query_pos.unsqueeze(0).expand(bs, -1, -1)
        query = query.unsqueeze(0).expand(bs, -1, -1)
        return {
            "query": query,
            "query_pos": query_pos,
            "reference_points": self.reference_points(query_pos).sigmoid(),
            "enc_outputs_class": None,
            "enc_outputs_coord_unact": None,
        }

    def decode(self, memory, levels: MultiLevelInputs, query, query_pos, reference_points, attn_masks=None,
               key=None):
        """Run the decoder on ``memory`` (B, N, C) (used as the cross-attention value; ``key`` is passed
        through for layers that use it). Depends only on its arguments, so it can be called several
        times with identical queries. Returns (inter_states [L, B, Q, C], inter_references [L, B, Q, 2|4])."""
        return self.decoder(
            query=query,
            key=key,
            value=memory,
            query_pos=query_pos,
            attn_masks=attn_masks,
            key_padding_mask=levels.mask_flatten,
            reference_points=reference_points,
            spatial_shapes=levels.spatial_shapes,
            level_start_index=levels.level_start_index,
            valid_ratios=levels.valid_ratios,
            spatial_sizes=levels.spatial_sizes,
        )

    def forward(self, multi_level_feats, multi_level_masks, multi_level_pos_embeds, query_embed, levels=None,
                **kwargs):
        """
        Args:
            multi_level_feats: L tensors (B, C, H_l, W_l); multi_level_masks: L (B, H_l, W_l) bool (True = pad);
            multi_level_pos_embeds: L (B, C, H_l, W_l).
            query_embed: (Q, 2C) learned queries (None in two-stage mode).
            levels: the `flatten_inputs` result, if the caller already computed it.
            **kwargs: extra encoder inputs (KS-DETR: a GT token mask in training).
        """
        if levels is None:
            levels = self.flatten_inputs(multi_level_feats, multi_level_masks, multi_level_pos_embeds)
        memory = self.encode(levels, **kwargs)
        q = self.prepare_queries(memory, levels, query_embed)
        inter_states, inter_references = self.decode(memory, levels, q["query"], q["query_pos"],
                                                     q["reference_points"])
        return (inter_states, q["reference_points"], inter_references, q["enc_outputs_class"],
                q["enc_outputs_coord_unact"])
