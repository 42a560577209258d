"""KS-DETR checkpoint -> baseline checkpoint (spec §9): drop the teacher-only weights.

Teacher-only entries of the authors' checkpoints:

* ``ksgt.*``: the sMLP (all variants);
* single-scale triple/dual attention: rows ``[3C:]`` of ``...attentions.0.attn.in_proj_weight`` and
  ``in_proj_bias`` in the KS encoder layer (``[6C,C]`` triple, ``[4C,C]`` dual share-A, ``[5C,C]`` dual
  share-V) — sliced to ``[:3C]``;
* deformable triple attention: ``*.attention_weights_teacher.*`` and ``*.value_proj_teacher.*`` — dropped.

The result loads with ``strict=True`` into the baseline detector and gives the KS model's eval predictions.
Works on state dicts of torch tensors or numpy arrays (detectron2 ``.pkl`` files).
"""
import re
from typing import Any, Dict, List, Tuple

__all__ = ["convert_ks_to_baseline", "is_teacher_only_key"]

_IN_PROJ = re.compile(r"^(?P<prefix>.*\.attn)\.in_proj_(?P<kind>weight|bias)$")
_DROP_PREFIXES = ("ksgt.",)
_DROP_PARTS = (".attention_weights_teacher.", ".value_proj_teacher.", ".sampling_offsets_teacher.",
               ".output_proj_teacher.")


def is_teacher_only_key(key: str) -> bool:
    """True for keys that exist only to compute the teachers (the whole tensor is teacher-only)."""
    return key.startswith(_DROP_PREFIXES) or any(p in key for p in _DROP_PARTS)


def convert_ks_to_baseline(state_dict: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """Return ``(baseline_state_dict, changes)``; ``changes`` lists one line per dropped or sliced key.

    Packed projections are recognised by shape: an ``*.attn.in_proj_weight`` with more than ``3 * C`` rows
    (``C`` = its column count) is cut to ``[:3C]``, and its ``in_proj_bias`` with it. Order is preserved.
    """
    out, changes = {}, []
    widths = {}  # attn prefix -> C, from the weights
    for key, value in state_dict.items():
        m = _IN_PROJ.match(key)
        if m and m.group("kind") == "weight":
            if len(value.shape) != 2:
                raise ValueError(f"convert_ks_to_baseline: {key} has shape {tuple(value.shape)}; expected [n*C, C].")
            widths[m.group("prefix")] = int(value.shape[1])
    for key, value in state_dict.items():
        if is_teacher_only_key(key):
            changes.append(f"dropped {key} {tuple(value.shape)}")
            continue
        m = _IN_PROJ.match(key)
        if m and m.group("prefix") in widths:
            rows = 3 * widths[m.group("prefix")]
            if value.shape[0] > rows:
                if value.shape[0] % widths[m.group("prefix")] != 0:
                    raise ValueError(f"convert_ks_to_baseline: {key} has {value.shape[0]} rows, not a multiple of C.")
                changes.append(f"sliced {key} {tuple(value.shape)} -> [:{rows}]")
                value = value[:rows]
        out[key] = value
    return out, changes
