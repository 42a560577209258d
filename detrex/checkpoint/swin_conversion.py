"""Official Swin Transformer ImageNet checkpoints -> detection backbone names.

The classification checkpoints released with Swin (``swin_tiny_patch4_window7_224.pth``,
``swin_tiny_patch4_window7_224_22kto1k_finetune.pth``, ``swin_small_...``, ``swin_base_..._22k.pth``)
are ``{"model": state_dict}`` with the same module names as the detection backbone
(:class:`detrex.modeling.backbone.swin.SwinTransformer`) except for a few entries. Key mapping:

==============================================  =============================================
official ImageNet key                           backbone key
==============================================  =============================================
``patch_embed.{proj,norm}.*``                   unchanged
``layers.{i}.blocks.{j}.*`` (norm1, attn.qkv,   unchanged (``relative_position_index`` kept:
attn.proj, attn.relative_position_bias_table,   the backbone registers it as a persistent
attn.relative_position_index, norm2, mlp.fc1,   buffer with the same values)
mlp.fc2)
``layers.{i}.downsample.{reduction,norm}.*``    unchanged
``layers.{i}.blocks.{j}.attn_mask``             dropped (fixed-resolution buffer of the
                                                classifier; the backbone builds its mask for
                                                each input size)
``norm.{weight,bias}``                          ``norm{L-1}.*`` (L = number of stages, so
                                                ``norm3``), if ``map_final_norm``; else dropped
``head.*``                                      dropped (ImageNet classifier)
``absolute_pos_embed`` (1, H*W, C)              (1, C, H, W) (only ``ape=True`` models)
==============================================  =============================================

``norm`` -> ``norm3``: the classifier's final LayerNorm normalizes exactly the stage-3 tokens that
``norm3`` normalizes, so it is the natural initial value. The detectron2/detrex loaders the KS-DETR
authors used match names by suffix and leave ``norm3`` at its initial value (weight 1, bias 0);
pass ``map_final_norm=False`` to reproduce that. Optionally every key gets a ``prefix``
(``"backbone."``) to address the backbone inside a detector.
"""
import re
from typing import Dict, Mapping

import torch

__all__ = ["is_swin_imagenet_state_dict", "convert_swin_imagenet_state_dict"]

_LAYER_KEY = re.compile(r"^layers\.(\d+)\.")


def is_swin_imagenet_state_dict(state_dict: Mapping[str, object]) -> bool:
    """True for an official Swin classification state dict (``patch_embed.proj.weight``,
    ``layers.0.blocks.0.attn.qkv.weight`` and ``norm.weight`` or ``head.weight`` at top level)."""
    keys = set(state_dict.keys())
    return (
        "patch_embed.proj.weight" in keys
        and "layers.0.blocks.0.attn.qkv.weight" in keys
        and ("norm.weight" in keys or "head.weight" in keys)
    )


def convert_swin_imagenet_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    map_final_norm: bool = True,
    prefix: str = "",
) -> Dict[str, torch.Tensor]:
    """Rename an official Swin ImageNet state dict to backbone names (see the module table).

    Args:
        state_dict: the checkpoint's ``"model"`` entry (a ``{"model": ...}`` wrapper is unwrapped).
        map_final_norm: map ``norm.*`` to ``norm{L-1}.*`` (True) or drop it (False).
        prefix: prepended to every output key, e.g. ``"backbone."``.

    Returns:
        a new dict; values are the same tensors (not copied).

    Raises:
        ValueError: if ``state_dict`` does not look like an official Swin checkpoint.
    """
    if isinstance(state_dict, Mapping) and "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
    if not isinstance(state_dict, Mapping) or not is_swin_imagenet_state_dict(state_dict):
        sample = list(state_dict.keys())[:5] if isinstance(state_dict, Mapping) else type(state_dict).__name__
        raise ValueError(
            "convert_swin_imagenet_state_dict: not an official Swin ImageNet state dict (expected keys "
            "'patch_embed.proj.weight', 'layers.0.blocks.0.attn.qkv.weight' and 'norm.weight'/'head.weight'); "
            f"got {sample}. Detector checkpoints with 'backbone.' keys load without conversion."
        )
    stages = {int(m.group(1)) for m in map(_LAYER_KEY.match, state_dict.keys()) if m}
    last_stage = max(stages)
    out = {}
    for k, v in state_dict.items():
        if k.startswith("head.") or k.endswith(".attn_mask") or k == "attn_mask":
            continue
        if k.startswith("norm."):
            if not map_final_norm:
                continue
            k = f"norm{last_stage}." + k[len("norm."):]
        elif k == "absolute_pos_embed" and v.dim() == 3:
            n, c = v.shape[1], v.shape[2]
            side = int(round(n ** 0.5))
            if side * side != n:
                raise ValueError(f"absolute_pos_embed has {n} positions, not a square grid")
            v = v.transpose(1, 2).reshape(1, c, side, side)
        out[prefix + k] = v
    return out
