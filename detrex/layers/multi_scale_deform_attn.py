"""Multi-scale deformable attention (Deformable-DETR, Zhu et al. 2021), with detrex's module interface.

Three layers, each usable on its own:

- :func:`multi_scale_deformable_attn_pytorch`: the core op in pure PyTorch (one ``F.grid_sample`` per level), any
  device, any floating dtype, differentiable in all three tensor inputs.
- :func:`ms_deform_attn`: the dispatch point. It runs a compiled op when one is available for the input's device
  (see :mod:`detrex.layers.msda_dispatch`) and the pure-PyTorch op otherwise.
- :class:`MultiScaleDeformableAttention`: the attention layer with detrex's parameter names, initialisation and
  ``forward`` signature, split into small steps (value projection, sampling locations, attention weights,
  aggregation) so that KS-DETR's triple-attention layer can reuse them with a second weight set or value tensor.

Conventions (shared by all three):

- value tokens of all levels are concatenated level-major, each level row-major: ``S = sum_l H_l * W_l``;
- ``spatial_shapes`` is ``(L, 2)`` int64 holding ``(H_l, W_l)``; ``level_start_index`` is ``(L,)``, the offset
  of each level in ``S``;
- sampling locations are normalized ``(x, y)`` with ``(0, 0)`` the top-left corner of the top-left pixel and
  ``(1, 1)`` the bottom-right corner of the bottom-right pixel (``align_corners=False``): pixel ``(i, j)`` of a
  level has its centre at ``((j + 0.5) / W, (i + 0.5) / H)``; samples are bilinear, and points outside the map
  read zeros.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import msda_dispatch, msda_op

__all__ = [
    "multi_scale_deformable_attn_pytorch",
    "ms_deform_attn",
    "MultiScaleDeformableAttention",
]

ShapesLike = Union[torch.Tensor, Sequence[Sequence[int]]]


# --------------------------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------------------------
def _tracing() -> bool:
    """True while ``torch.jit.trace`` or the TorchScript ONNX exporter records the model: the pure-PyTorch op then
    runs (whatever op is built) and level sizes stay traced values, so the exported graph takes any image size."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _shape_str(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def _level_sizes(spatial_shapes: ShapesLike, where: str) -> List[Tuple[int, int]]:
    """``spatial_shapes`` as a list of ``(H_l, W_l)`` Python ints (one host sync for a device tensor)."""
    if isinstance(spatial_shapes, torch.Tensor):
        if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
            raise ValueError(f"{where}: spatial_shapes must be (L, 2) holding (H_l, W_l), "
                             f"got {_shape_str(spatial_shapes)}")
        if spatial_shapes.is_floating_point() or spatial_shapes.is_complex():
            raise TypeError(f"{where}: spatial_shapes must be an integer tensor, got {spatial_shapes.dtype}")
        if _tracing():  # one traced (H_l, W_l) pair per level instead of constants read to the host
            return [(spatial_shapes[i, 0], spatial_shapes[i, 1]) for i in range(spatial_shapes.shape[0])]
        pairs = spatial_shapes.tolist()
    else:
        pairs = [list(p) for p in spatial_shapes]
        if any(len(p) != 2 for p in pairs):
            raise ValueError(f"{where}: spatial_shapes must be a list of (H_l, W_l) pairs, got {spatial_shapes!r}")
    if _tracing():  # keep traced sizes (0-dim tensors) as they are: int() would freeze them into the graph
        return [(h, w) for h, w in pairs]
    sizes = [(int(h), int(w)) for h, w in pairs]
    if not sizes or any(h <= 0 or w <= 0 for h, w in sizes):
        raise ValueError(f"{where}: spatial_shapes must hold at least one level of positive (H_l, W_l), got {sizes}")
    return sizes


def _check_core_shapes(value, sampling_locations, attention_weights, num_levels: Optional[int], where: str) -> None:
    """Rank/shape agreement of the core op's tensor inputs (no host sync)."""
    for name, t in (("value", value), ("sampling_locations", sampling_locations),
                    ("attention_weights", attention_weights)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{where}: {name} must be a floating-point tensor, got {t.dtype}")
    if value.dim() != 4:
        raise ValueError(f"{where}: value must be (B, S, M, D) = (batch, tokens, heads, channels per head), "
                         f"got {_shape_str(value)}")
    b, _, m, _ = value.shape
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(f"{where}: sampling_locations must be (B, Q, M, L, P, 2), "
                         f"got {_shape_str(sampling_locations)}")
    sb, _, sm, sl, _, _ = sampling_locations.shape
    if sb != b or sm != m or (num_levels is not None and sl != num_levels):
        expected_l = "L" if num_levels is None else str(num_levels)
        raise ValueError(f"{where}: sampling_locations must be (B={b}, Q, M={m}, L={expected_l}, P, 2) to match value "
                         f"{_shape_str(value)} and spatial_shapes, got {_shape_str(sampling_locations)}")
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(f"{where}: attention_weights must be (B, Q, M, L, P) = {tuple(sampling_locations.shape[:-1])} "
                         f"to match sampling_locations, got {_shape_str(attention_weights)}")


# --------------------------------------------------------------------------------------------------------------------
# the core op
# --------------------------------------------------------------------------------------------------------------------
def multi_scale_deformable_attn_pytorch(
    value: torch.Tensor,
    spatial_shapes: ShapesLike,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention core in pure PyTorch (the grid_sample formulation of Deformable-DETR).

    ``output[b, q, m*D:(m+1)*D] = sum_{l, p} attention_weights[b, q, m, l, p] *
    bilinear(value_l[b, :, m, :], sampling_locations[b, q, m, l, p])``.

    Args:
        value: ``(B, S, M, D)``, ``S = sum_l H_l * W_l`` (level-major, row-major within a level).
        spatial_shapes: ``(L, 2)`` int64 tensor (or list) of ``(H_l, W_l)``.
        sampling_locations: ``(B, Q, M, L, P, 2)`` normalized ``(x, y)``, ``align_corners=False`` convention;
            points outside ``[0, 1]`` read zeros (``padding_mode="zeros"``).
        attention_weights: ``(B, Q, M, L, P)`` (usually softmax-normalized over ``L * P``).

    Returns:
        ``(B, Q, M * D)``. Inputs of different floating dtypes are computed in their promoted dtype (as autocast
        promotes ``grid_sample``), which is also the output dtype: float16/bfloat16 values with float32 locations
        keep float32 locations, since bfloat16 locations alone would be off by up to ~0.7 pixel on a 167-wide map.
        Half-precision products are summed in float32 and rounded once at the end.
    """
    where = "multi_scale_deformable_attn_pytorch"
    sizes = _level_sizes(spatial_shapes, where)
    _check_core_shapes(value, sampling_locations, attention_weights, len(sizes), where)
    b, s, m, d = value.shape
    _, q, _, num_levels, p, _ = sampling_locations.shape
    if not _tracing() and sum(h * w for h, w in sizes) != s:
        raise ValueError(f"{where}: value has S={s} tokens but spatial_shapes {sizes} sum to "
                         f"{sum(h * w for h, w in sizes)}; value must hold every level's H_l*W_l tokens")

    dtype = torch.promote_types(torch.promote_types(value.dtype, sampling_locations.dtype), attention_weights.dtype)
    value, sampling_locations, attention_weights = (t.to(dtype) for t in (value, sampling_locations, attention_weights))
    acc_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype

    grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
    # (B, Q, M, L, P) -> (B*M, 1, Q, L, P): broadcasts against (B*M, D, Q, P) per level
    weights = attention_weights.transpose(1, 2).reshape(b * m, 1, q, num_levels, p)
    output = None
    if _tracing():  # traced sizes: slice level by level (split needs Python ints)
        starts = [0]
        for h, w in sizes[:-1]:
            starts.append(starts[-1] + h * w)
        value_per_level = [value[:, st:st + h * w] for st, (h, w) in zip(starts, sizes)]
    else:  # one split: its backward is one concatenation, where slices would give one scatter per level
        value_per_level = value.split([h * w for h, w in sizes], dim=1)
    for lvl, (h, w) in enumerate(sizes):
        # (B, H*W, M, D) -> (B*M, D, H, W)
        value_l = value_per_level[lvl].flatten(2).transpose(1, 2).reshape(b * m, d, h, w)
        # (B, Q, M, P, 2) -> (B*M, Q, P, 2)
        grid_l = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled = F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        # (B*M, D, Q, P) weighted over P -> (B*M, D, Q)
        part = (sampled * weights[..., lvl, :]).sum(-1, dtype=acc_dtype)
        output = part if output is None else output + part
    output = output.to(dtype).view(b, m * d, q)
    return output.transpose(1, 2).contiguous()


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: ShapesLike,
    level_start_index: Optional[torch.Tensor],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    im2col_step: int = 64,
    spatial_sizes: Optional[Sequence[Tuple[int, int]]] = None,
) -> torch.Tensor:
    """Multi-scale deformable attention core, dispatched to a compiled op when one serves ``value``'s device.

    Same tensors and result as :func:`multi_scale_deformable_attn_pytorch` (``(B, Q, M * D)``), plus
    ``level_start_index`` ``(L,)`` (computed from ``spatial_shapes`` when ``None``) and ``im2col_step`` (the
    compiled op's batch chunk size; ignored by the pure-PyTorch path). ``spatial_sizes``: the same ``(H_l, W_l)``
    as Python ints, when the caller has them: the pure-PyTorch path then needs no host read of a device
    ``spatial_shapes``. Which path runs is logged once; see :mod:`detrex.layers.msda_dispatch`. On the compiled path
    a bad input raises :class:`detrex.layers.msda_op.MSDAInputError` (a ``ValueError`` and a ``RuntimeError``) from
    Python, naming the argument, before the op runs.
    """
    op = None if _tracing() else msda_dispatch.compiled_op_for(value)
    if op is None:
        shapes = spatial_shapes if spatial_sizes is None else spatial_sizes
        return multi_scale_deformable_attn_pytorch(value, shapes, sampling_locations, attention_weights)
    # the compiled op's input checks run here, in Python, before any compiled code (its C++ checks are a second line)
    args = msda_op.prepare_inputs("ms_deform_attn", value, spatial_shapes, level_start_index, sampling_locations,
                                  attention_weights, im2col_step, device_type=value.device.type)
    return op(*args)


# --------------------------------------------------------------------------------------------------------------------
# the attention layer
# --------------------------------------------------------------------------------------------------------------------
class MultiScaleDeformableAttention(nn.Module):
    """Multi-scale deformable attention layer (Deformable-DETR, Zhu et al. 2021; detrex's interface).

    Each query predicts, per head ``m``, level ``l`` and point ``p``, a sampling offset and an attention weight
    (softmax over the ``L * P`` points of a head); the head's output is the weighted sum of the bilinearly
    sampled projected values. Parameter names and initialisation follow detrex, so detrex / KS-DETR checkpoints
    load as they are: ``sampling_offsets`` Linear(C, M*L*P*2), ``attention_weights`` Linear(C, M*L*P),
    ``value_proj`` and ``output_proj`` Linear(C, C).

    Args:
        embed_dim: channels ``C``; must be divisible by ``num_heads``.
        num_heads: heads ``M``.
        num_levels: feature levels ``L``.
        num_points: sampling points ``P`` per head and level.
        img2col_step: batch chunk size passed to a compiled op (detrex's spelling; stored as ``im2col_step``).
        dropout: dropout on the output before the residual.
        batch_first: ``(B, N, C)`` inputs/outputs if True, else ``(N, B, C)``.

    Steps a subclass can reuse (all batch-first): :meth:`project_value`, :meth:`compute_sampling_locations`,
    :meth:`compute_attention_weights`, :meth:`attend`.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        img2col_step: int = 64,
        dropout: float = 0.1,
        batch_first: bool = False,
    ):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"MultiScaleDeformableAttention: embed_dim ({embed_dim}) must be divisible by "
                             f"num_heads ({num_heads})")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.im2col_step = img2col_step
        self.batch_first = batch_first
        self.dropout = nn.Dropout(dropout)

        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.init_weights()

    def init_weights(self) -> None:
        """Deformable-DETR initialisation: offsets start on a polar grid, weights uniform, projections xavier.

        Head ``m`` points along the angle ``2*pi*m/M``, direction scaled so its larger component is 1; point ``p``
        sits ``p + 1`` times that far (in pixels of each level for 2-d reference points). Sampling-offset and
        attention-weight matrices are zero, so at init the offsets equal this bias and the weights are
        ``1 / (L * P)``.
        """
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        grid = directions.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    # ---------------------------------------------------------------- steps (batch-first)
    def project_value(
        self,
        value: torch.Tensor,
        key_padding_mask: Optional[torch.Tensor] = None,
        proj: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Project value tokens ``(B, S, C)`` and split heads -> ``(B, S, M, C // M)``.

        ``key_padding_mask`` ``(B, S)``, True at padded tokens, zeroes those tokens after the projection.
        ``proj`` replaces ``self.value_proj`` (e.g. a teacher value projection).
        """
        proj = self.value_proj if proj is None else proj
        b, s, _ = value.shape
        value = proj(value)
        if key_padding_mask is not None:
            if key_padding_mask.shape != (b, s):
                raise ValueError(f"MultiScaleDeformableAttention: key_padding_mask must be (B, S) = {(b, s)} "
                                 f"(True at padded value tokens), got {_shape_str(key_padding_mask)}")
            value = value.masked_fill(key_padding_mask.to(torch.bool)[..., None], 0.0)
        return value.reshape(b, s, self.num_heads, -1)

    def compute_sampling_locations(
        self, query: torch.Tensor, reference_points: torch.Tensor, spatial_shapes: ShapesLike
    ) -> torch.Tensor:
        """Sampling locations ``(B, Q, M, L, P, 2)``, normalized ``(x, y)``, from queries ``(B, Q, C)``.

        ``reference_points`` ``(B, Q, L, 2)``: normalized points ``(x, y)``; offsets are in pixels of each level,
        ``loc = ref + offset / (W_l, H_l)``. ``(B, Q, L, 4)``: normalized boxes ``(cx, cy, w, h)``;
        ``loc = (cx, cy) + offset / P * (w, h) * 0.5``.
        """
        b, q, _ = query.shape
        if (reference_points is None or reference_points.dim() != 4
                or reference_points.shape[:3] != (b, q, self.num_levels) or reference_points.shape[-1] not in (2, 4)):
            got = None if reference_points is None else _shape_str(reference_points)
            raise ValueError(f"MultiScaleDeformableAttention: reference_points must be (B, Q, L, 2) points or "
                             f"(B, Q, L, 4) boxes with B={b}, Q={q}, L={self.num_levels}, got {got}")
        offsets = self.sampling_offsets(query).view(b, q, self.num_heads, self.num_levels, self.num_points, 2)
        if reference_points.shape[-1] == 2:
            if not isinstance(spatial_shapes, torch.Tensor):
                spatial_shapes = torch.as_tensor(spatial_shapes, dtype=torch.long, device=query.device)
            if spatial_shapes.shape != (self.num_levels, 2):
                raise ValueError(f"MultiScaleDeformableAttention: spatial_shapes must be (L, 2) = "
                                 f"({self.num_levels}, 2) holding (H_l, W_l), got {_shape_str(spatial_shapes)}")
            normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)  # (W_l, H_l)
            return reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        return (reference_points[:, :, None, :, None, :2]
                + offsets / self.num_points * reference_points[:, :, None, :, None, 2:] * 0.5)

    def compute_attention_weights(
        self, query: torch.Tensor, proj: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    ) -> torch.Tensor:
        """Attention weights ``(B, Q, M, L, P)`` from queries ``(B, Q, C)``, softmax over each head's ``L * P``.

        ``proj`` replaces ``self.attention_weights`` (e.g. a teacher weight set).
        """
        proj = self.attention_weights if proj is None else proj
        b, q, _ = query.shape
        weights = proj(query).view(b, q, self.num_heads, self.num_levels * self.num_points).softmax(-1)
        return weights.view(b, q, self.num_heads, self.num_levels, self.num_points)

    def attend(
        self,
        value: torch.Tensor,
        spatial_shapes: ShapesLike,
        level_start_index: Optional[torch.Tensor],
        sampling_locations: torch.Tensor,
        attention_weights: torch.Tensor,
        spatial_sizes: Optional[Sequence[Tuple[int, int]]] = None,
    ) -> torch.Tensor:
        """Core op plus output projection: ``(B, S, M, D)`` values -> ``(B, Q, C)`` (no dropout, no residual)."""
        output = ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                                self.im2col_step, spatial_sizes=spatial_sizes)
        # the core computes in the promoted dtype of its inputs; project in value's dtype (as detrex does for fp16)
        return self.output_proj(output.to(value.dtype))

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        query: torch.Tensor,
        key: Optional[torch.Tensor] = None,
        value: Optional[torch.Tensor] = None,
        identity: Optional[torch.Tensor] = None,
        query_pos: Optional[torch.Tensor] = None,
        key_padding_mask: Optional[torch.Tensor] = None,
        reference_points: Optional[torch.Tensor] = None,
        spatial_shapes: Optional[ShapesLike] = None,
        level_start_index: Optional[torch.Tensor] = None,
        spatial_sizes: Optional[Sequence[Tuple[int, int]]] = None,
        **kwargs,
    ) -> torch.Tensor:
        """Deformable attention with residual: ``identity + dropout(output_proj(MSDA(...)))``.

        Args:
            query: ``(Q, B, C)``, or ``(B, Q, C)`` if ``batch_first``.
            key: unused (kept for the detrex interface).
            value: ``(S, B, C)`` / ``(B, S, C)`` flattened multi-level features; defaults to ``query``.
            identity: residual, shaped like ``query``; defaults to ``query`` (before ``query_pos`` is added).
            query_pos: positional embedding added to ``query`` for offsets and weights (not to ``value``).
            key_padding_mask: ``(B, S)`` bool, True at padded value tokens (they are zeroed after projection).
            reference_points: ``(B, Q, L, 2)`` normalized points or ``(B, Q, L, 4)`` normalized cxcywh boxes
                (always batch-first).
            spatial_shapes: ``(L, 2)`` int64 ``(H_l, W_l)``.
            level_start_index: ``(L,)`` start of each level in ``S`` (used by a compiled op).
            spatial_sizes: optional ``[(H_l, W_l)]`` Python ints (saves the pure-PyTorch path a host read).

        Returns:
            Same layout as ``query``: ``(Q, B, C)``, or ``(B, Q, C)`` if ``batch_first``.
        """
        if value is None:
            value = query
        if identity is None:
            identity = query
        if query_pos is not None:
            query = query + query_pos
        if spatial_shapes is None:
            raise ValueError("MultiScaleDeformableAttention: spatial_shapes ((L, 2) int64 (H_l, W_l)) is required")
        for name, t in (("query", query), ("value", value)):
            if t.dim() != 3 or t.shape[-1] != self.embed_dim:
                layout = "(B, N, C)" if self.batch_first else "(N, B, C)"
                raise ValueError(f"MultiScaleDeformableAttention: {name} must be {layout} with C={self.embed_dim}, "
                                 f"got {_shape_str(t)}")
        if not self.batch_first:
            query = query.transpose(0, 1)
            value = value.transpose(0, 1)
        if value.shape[0] != query.shape[0]:
            raise ValueError(f"MultiScaleDeformableAttention: query and value batch sizes differ "
                             f"({query.shape[0]} vs {value.shape[0]})")

        value = self.project_value(value, key_padding_mask)
        sampling_locations = self.compute_sampling_locations(query, reference_points, spatial_shapes)
        attention_weights = self.compute_attention_weights(query)
        output = self.attend(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                             spatial_sizes)
        if not self.batch_first:
            output = output.transpose(0, 1)
        return self.dropout(output) + identity

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_levels={self.num_levels}, "
                f"num_points={self.num_points}, batch_first={self.batch_first}")
