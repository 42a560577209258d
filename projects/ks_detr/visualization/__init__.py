"""Attention views of KS-DETR models, used by ``tools/visualize_attention.py`` (its docstring documents the
panels and the ``--save-raw`` arrays).

* :mod:`.single_scale`: DAB/Conditional/DN-DETR encoders (KS and plain): capture the last encoder layer's
  student / teacher-1 self-attention (heads, N, N), GT token masks (h, w), draw the mask and heatmap panels.
* :mod:`.deformable`: Deformable/DN-Deformable-DETR encoders (KS and plain): capture the last encoder layer's
  sampling locations (N, M, L, P, 2) and weights (N, M, L, P) per branch, multi-level GT masks, draw the
  per-level mask and sampling-point panels.
* :mod:`.common`: what both share: the teacher-path forward pass, query-token choice, the error type.
"""
from .common import UnsupportedModelError, choose_queries, forward_once, teacher_path
from .deformable import (capture_sampling, choose_level_queries, find_deformable_attention, level_token_masks,
                         raw_sampling, render_sampling)
from .single_scale import (attention_weights, capture_attention, find_last_encoder_attention, raw_attention,
                           render_attention, token_masks)

__all__ = [
    "UnsupportedModelError", "teacher_path", "forward_once", "choose_queries",
    "find_last_encoder_attention", "attention_weights", "capture_attention", "token_masks", "render_attention",
    "raw_attention",
    "find_deformable_attention", "capture_sampling", "level_token_masks", "choose_level_queries",
    "render_sampling", "raw_sampling",
]
