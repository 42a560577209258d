#!/usr/bin/env python
"""Parameter counts, FLOPs, activations and structure of a detector from its LazyConfig.

    python tools/analyze_model.py --config-file CFG --tasks parameter flop activation structure \
        [--input-size 800 1333] [--max-depth 3] [--opts key=value ...]

* ``parameter``: a table per module (up to ``--max-depth``) with the total, the **student** part and the
  **teacher-only** part. Teacher-only = what exists only to compute KS-DETR's teachers and is dropped by
  ``projects.ks_detr.modeling.convert_ks_to_baseline``: ``ksgt.*`` (sMLP), ``*_teacher`` modules and the teacher
  rows ``[3C:]`` of packed ``*.attn.in_proj_weight/bias``. The student column is what the inference model
  (the baseline architecture) holds. Non-KS models have no teacher part.
* ``flop``: fvcore ``FlopCountAnalysis`` (one fused multiply-add = one flop, as fvcore and detectron2 count) of
  the model in **eval mode** on one random image of ``--input-size H W`` (default 800 1333), from pixels to raw
  outputs (backbone, transformer, heads; no top-k/post-processing). Eval mode runs a KS model's student only,
  so its FLOPs equal the baseline's. ``aten::scaled_dot_product_attention`` is counted (2 * B * heads * N * M * d).
* ``activation``: fvcore ``ActivationCountAnalysis`` on the same input.
* ``structure``: ``print(model)``.

Tables are printed with ``tabulate``. The model is randomly initialised
unless ``train.init_checkpoint`` is set (counts do not depend on weights). Works on CPU.
"""
import argparse
import logging
import os
import sys
from collections import OrderedDict
from typing import Dict, List, Tuple

import torch
from torch import nn

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from demo.predictor import USER_ERRORS, UserInputError, load_config  # noqa: E402
from detrex.config import instantiate  # noqa: E402

TASKS = ("parameter", "flop", "activation", "structure")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=["parameter", "flop"], help="what to report")
    p.add_argument("--input-size", type=int, nargs=2, default=[800, 1333], metavar=("H", "W"),
                   help="image size for flop/activation counting")
    p.add_argument("--max-depth", type=int, default=3, help="module depth of the tables")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="key=value config overrides")
    return p


# ------------------------------------------------------------------------------------------ parameters
def split_parameters(model: nn.Module) -> Dict[str, Tuple[int, int]]:
    """``{param name: (total, teacher_only)}`` element counts, using the KS checkpoint converter's rule."""
    params = OrderedDict((n, p) for n, p in model.named_parameters())
    try:
        from projects.ks_detr.modeling.checkpoint import convert_ks_to_baseline
    except ImportError:  # no KS project: nothing is teacher-only
        return OrderedDict((n, (p.numel(), 0)) for n, p in params.items())
    student, _ = convert_ks_to_baseline({n: p.detach() for n, p in params.items()})
    return OrderedDict((n, (p.numel(), p.numel() - (student[n].numel() if n in student else 0)))
                       for n, p in params.items())


def parameter_table(model: nn.Module, max_depth: int) -> Tuple[str, Dict[str, Tuple[int, int]]]:
    """Rows per module prefix up to ``max_depth``: (name, total, student, teacher-only)."""
    from tabulate import tabulate

    per_param = split_parameters(model)
    agg: Dict[str, List[int]] = OrderedDict()
    agg["model"] = [0, 0]
    for name, (total, teacher) in per_param.items():
        parts = name.split(".")
        keys = ["model"] + [".".join(parts[:d]) for d in range(1, min(max_depth, len(parts) - 1) + 1)]
        for k in keys:
            agg.setdefault(k, [0, 0])
            agg[k][0] += total
            agg[k][1] += teacher
    rows = [(("  " * (0 if k == "model" else k.count(".") + 1)) + k, _fmt(t), _fmt(t - s), _fmt(s))
            for k, (t, s) in agg.items()]
    table = tabulate(rows, headers=["module", "#params", "student", "teacher-only"], tablefmt="pipe",
                     colalign=("left", "right", "right", "right"))
    return table, {k: (t, t - s, s) for k, (t, s) in agg.items()}


def _fmt(n: int) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.3f}M"
    if n >= 1e3:
        return f"{n / 1e3:.2f}K"
    return str(n)


# ------------------------------------------------------------------------------------------ flops
class RawOutputs(nn.Module):
    """Traceable wrapper: image tensor (3, H, W) -> (pred_logits, pred_boxes) through the detector's own
    ``preprocess_image`` and ``forward_raw`` (eval mode, no ground truth)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        images = self.model.preprocess_image([{"image": image}])
        out = self.model.forward_raw(images, None)
        return out["pred_logits"], out["pred_boxes"]


def _sdpa_flop(inputs, outputs):
    """fvcore handle for aten::scaled_dot_product_attention: QK^T and AV, B*heads*N*M*d each."""
    from fvcore.nn.jit_handles import get_shape

    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    *batch, n, d = q
    m = k[-2]
    b = 1
    for x in batch:
        b *= x
    return 2 * b * n * m * d


def _baddbmm_flop(inputs, outputs):
    """fvcore handle for aten::baddbmm(input, batch1 (b, n, k), batch2 (b, k, m)): b*n*k*m."""
    from fvcore.nn.jit_handles import get_shape

    b, n, k = get_shape(inputs[1])
    m = get_shape(inputs[2])[-1]
    return b * n * k * m


def _analysis(kind: str, model: nn.Module, image: torch.Tensor):
    from fvcore.nn import ActivationCountAnalysis, FlopCountAnalysis

    wrapper = RawOutputs(model).eval()
    cls = FlopCountAnalysis if kind == "flop" else ActivationCountAnalysis
    a = cls(wrapper, (image,))
    if kind == "flop":
        a = a.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flop, "aten::baddbmm", _baddbmm_flop)
    a.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    return a


def run_count(kind: str, model: nn.Module, size: Tuple[int, int], max_depth: int) -> Tuple[str, int]:
    from tabulate import tabulate

    image = torch.randint(0, 256, (3, int(size[0]), int(size[1])), dtype=torch.uint8).float()
    a = _analysis(kind, model, image)
    total = a.total()
    by_module = a.by_module()
    params = dict(model.named_parameters())
    rows = []
    for mod_name, _ in model.named_modules():
        depth = 0 if mod_name == "" else mod_name.count(".") + 1
        if depth > max_depth:
            continue
        n_params = sum(p.numel() for n, p in params.items() if mod_name == "" or n.startswith(mod_name + "."))
        count = by_module.get("model" if mod_name == "" else "model." + mod_name, 0)
        if count == 0 and depth > 1:
            continue
        rows.append(("  " * depth + (mod_name or "model"), _fmt(n_params), _fmt(int(count))))
    header = "#flops" if kind == "flop" else "#activations"
    table = tabulate(rows, headers=["module", "#params", header], tablefmt="pipe",
                     colalign=("left", "right", "right"))
    skipped = a.unsupported_ops()
    note = ""
    if skipped:
        note = "\nnot counted (no fvcore handle): " + ", ".join(f"{k} x{v}" for k, v in sorted(skipped.items()))
    return table + note, int(total)


def main(argv=None) -> int:
    parser = get_parser()
    args, unknown = parser.parse_known_args(argv)
    bad = [u for u in unknown if "=" not in u or u.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    try:
        cfg = load_config(args.config_file, list(args.opts) + unknown)
        if "model" not in cfg:
            raise UserInputError("The config has no `model` entry")
        if isinstance(cfg.model.get("device", None), str):
            cfg.model.device = "cpu"
        model = instantiate(cfg.model).eval()
        name = type(model).__name__
        for task in args.tasks:
            if task == "parameter":
                table, agg = parameter_table(model, args.max_depth)
                total, student, teacher = agg["model"]
                print(f"[parameter] {name}: {total:,} parameters; student (inference) {student:,}; "
                      f"teacher-only {teacher:,}\n{table}\n", flush=True)
            elif task in ("flop", "activation"):
                with torch.no_grad():
                    table, total = run_count(task, model, args.input_size, args.max_depth)
                unit = "GFLOPs" if task == "flop" else "M activations"
                h, w = args.input_size
                mode = "eval mode, student only" if hasattr(model, "ksgt") else "eval mode"
                print(f"[{task}] {name} ({mode}) at input {h}x{w}: total "
                      f"{total / (1e9 if task == 'flop' else 1e6):.4f} {unit} ({total:,})\n{table}\n", flush=True)
            elif task == "structure":
                print(f"[structure] {name}:\n{model}\n", flush=True)
    except USER_ERRORS as e:
        print(f"analyze_model.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
