#!/usr/bin/env python
"""Show what KS-DETR's knowledge sharing does to attention, for one image and its ground truth.

    python tools/visualize_attention.py --config-file CFG --dataset shapes_val --index 0 3 --output out/ \
        [--num-queries 4] [--mapper test|train] [--save-raw] [--opts train.init_checkpoint=model_final.pth]

e.g. for the deformable shapes demo (random init unless a checkpoint is given; ``train.seed`` seeds it):

    python tools/visualize_attention.py \
        --config-file projects/ks_detr/configs/ks_deformable_detr/ks_deformable_detr_shapes_demo.py \
        --index 0 --num-queries 3 --output out/ --save-raw

The tool looks at the last encoder layer (the KS layer of a KS model) and picks query tokens on the GT
foreground (the token under each box centre first). Single-scale models (DAB/Conditional/DN-DETR and their KS
versions) get two PNG panels per image:

* ``<name>_gt_mask.png``: the image with its (mapped) GT boxes, the GT foreground/background token mask M
  on the last encoder layer's token grid with the authors' rule (bilinear ``align_corners=True`` point
  sampling, the released models) and, side by side, the ``cell_overlap`` rule (a token is foreground when any
  pixel of its stride cell is inside a box);
* ``<name>_attention.png``: the last encoder layer's self-attention weights, averaged over heads, as heatmaps
  over the key tokens: one row per query token (chosen on the foreground, marked by a ring) and rows for the
  mean over all (valid) queries and over the foreground queries. Columns: the **student** A = softmax(QK^T/sqrt(d))
  and **teacher 1** A^t, computed from the GT-enhanced tokens X^t = sMLP(X, M) (share-V teacher: it uses A^t
  with the student's values). **Teacher 2** (share A) uses the student's weights A with its own values V^t, so
  its attention-weight map *is* the student's column; it differs from the student only in the values.
  A last column shows A^t - A.

Deformable models (Deformable-DETR, DN-Deformable-DETR and their KS versions) get:

* ``<name>_gt_mask.png``: the image with its GT boxes and the KS GT mask M of **every feature level** (KS-
  Deformable-DETR resizes one full-resolution box canvas to each level and concatenates the levels' tokens),
  with the authors' rule (top row; "the model's" marks the rule its ``ksgt`` uses) and the ``cell_overlap``
  rule (bottom row), next to the image with the chosen query tokens (on the finest level, level 0);
* ``<name>_sampling.png``: one row per query token (cyan ring): the sampling locations of all heads x levels x
  points drawn on the padded image (inside a grey frame: points off the feature maps read zeros), one dot per
  point whose area and opacity grow with its attention weight, coloured by level. Columns: the **student**
  A = softmax(attention_weights(q)) and, for a KS model, **teacher 1** A^t = softmax(attention_weights_teacher(q^t))
  from the GT-enhanced query q^t = sMLP(X, M) + P, and A^t - A (red: teacher 1 weighs the point more). All
  three KS branches sample the *same* locations (offsets come from the student query only); teacher 1 shares
  the student's values, teacher 2 shares the student's weights A (so its column would repeat the student's)
  and has its own values. Dot sizes share one scale per row. A baseline model shows the student column only.

With ``--save-raw`` it also writes, single scale, ``<name>_attention.npz`` (``student``, ``teacher1``: (N, N)
head-averaged attention of image tokens, rows = queries; ``student_heads``/``teacher1_heads``: (heads, N, N);
``mask_authors``/``mask_cell_overlap``: (h, w); ``query_tokens``; ``feat_size``; ``valid``: (N,) not-padded),
and for deformable models ``<name>_sampling.npz``: per branch (``student``; KS also ``teacher1``, ``teacher2``)
``<branch>_locations`` (queries, heads, levels, points, 2) normalized ``(x, y)``, where (0, 0) and (1, 1) are
the top-left and bottom-right corners of each level's (padded) feature map, i.e. of the padded image (not
clipped: values outside [0, 1] are points off the map), and ``<branch>_weights`` (queries, heads, levels,
points), summing to 1 over levels x points per query and head; ``query_tokens`` (indices into the N = sum_l
H_l*W_l tokens, level-major, row-major); ``spatial_shapes`` (L, 2) (H_l, W_l); ``level_start_index``;
``valid``, ``mask_authors``, ``mask_cell_overlap`` and, for KS, ``mask_model`` (the mask its sMLP received):
(N,) bool; ``padded_size``, ``image_size`` (h, w).

How it works: the model runs in eval mode (no dropout) but, for a KS model, with the detector's teacher path
switched on (``model.training`` set, submodules in eval). Single scale: a forward pre-hook on the KS layer's
attention records its inputs; the weights are recomputed from the packed ``in_proj`` (rows [0:C] q, [C:2C] k,
[3C:4C] q^t, [4C:5C] k^t), with padded keys masked. Deformable: forward hooks record the last layer's query
(input of ``sampling_offsets``), teacher query (input of ``attention_weights_teacher``) and GT mask (``ksgt``
input), a pre-hook on the decoder the level geometry; locations and weights are recomputed with the
attention's own ``compute_sampling_locations`` / ``compute_attention_weights`` from the transformer's encoder
reference points. A baseline (non-KS) model shows the student only.
"""
import argparse
import contextlib
import math
import os
import sys
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from demo.predictor import USER_ERRORS, UserInputError, build_model, default_device, load_config  # noqa: E402
from detrex.config import instantiate, try_get_key  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--dataset", default=None, help="registered dataset name (default: the config's test dataset)")
    p.add_argument("--index", type=int, nargs="+", default=[0], help="indices of images in the dataset")
    p.add_argument("--mapper", choices=("test", "train"), default="test",
                   help="map the image with the config's test mapper (annotations kept) or train mapper (augmented)")
    p.add_argument("--num-queries", type=int, default=4, help="query tokens to show (chosen on the foreground)")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--save-raw", action="store_true", help="also write the attention matrices as .npz")
    p.add_argument("--device", default="cpu")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="key=value config overrides")
    return p


# ---------------------------------------------------------------------------------------------- capture
def find_last_encoder_attention(model):
    """(layer, attention module holding in_proj_weight, is_ks) of the last encoder layer."""
    try:
        layer = model.transformer.encoder.layers[-1]
        attn = layer.attentions[0].attn
    except AttributeError as e:
        raise UserInputError(
            f"{type(model).__name__}: expected model.transformer.encoder.layers[-1].attentions[0].attn "
            "(a single-scale DETR encoder) or a MultiScaleDeformableAttention at "
            "model.transformer.encoder.layers[-1].attentions[0] (a deformable encoder)") from e
    if not hasattr(attn, "in_proj_weight") or attn.in_proj_weight is None:
        raise UserInputError(f"{type(attn).__name__} has no packed in_proj_weight; cannot recompute its weights.")
    return layer, attn, hasattr(layer, "forward_teachers")


@contextlib.contextmanager
def _teacher_path(model):
    """Eval-mode submodules (no dropout, frozen statistics) but the detector's own ``training`` flag on, so
    ``transformer_inputs`` builds the teacher tokens from the targets. Restored afterwards."""
    was = model.training
    model.eval()
    model.training = True
    try:
        yield
    finally:
        model.training = was
        model.train(was)


def _weights(q: torch.Tensor, k: torch.Tensor, heads: int, key_padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """q, k (N, B, C) -> softmax over keys (B, heads, N, N), padded keys masked."""
    N, B, C = q.shape
    d = C // heads
    qh = q.reshape(N, B, heads, d).permute(1, 2, 0, 3)
    kh = k.reshape(N, B, heads, d).permute(1, 2, 0, 3)
    logits = qh @ kh.transpose(-1, -2) / math.sqrt(d)
    if key_padding_mask is not None:
        logits = logits.masked_fill(key_padding_mask.bool()[:, None, None, :], float("-inf"))
    return logits.softmax(dim=-1)


def capture_attention(model, batched_inputs: List[Dict]) -> Dict:
    """Run the model on one mapped image (with ``instances``) and return the last encoder layer's weights.

    Returns a dict with ``student`` (heads, N, N), optionally ``teacher1`` (heads, N, N), ``feat_size`` (h, w),
    ``padded_size`` (H, W), ``image_size`` (h_img, w_img), ``valid`` (N,) bool and the targets.
    """
    layer, attn, is_ks = find_last_encoder_attention(model)
    heads, C = attn.num_heads, attn.embed_dim
    W, b = attn.in_proj_weight.detach(), attn.in_proj_bias.detach()
    rec: Dict = {}

    def ks_hook(module, args, kwargs):
        names = ("x_qk", "x_v", "xt_qk", "xt_v", "key_padding_mask")
        vals = dict(zip(names, args))
        vals.update({k: v for k, v in kwargs.items() if k in names})
        rec.update(vals)

    def mha_hook(module, args, kwargs):
        # nn.MultiheadAttention(query, key, value, key_padding_mask=...) with query = X + P
        rec["x_qk"] = args[0] if args else kwargs["query"]
        rec["k_in"] = args[1] if len(args) > 1 else kwargs["key"]
        rec["key_padding_mask"] = kwargs.get("key_padding_mask")

    feat = {}

    def size_hook(module, inputs, output):  # must return None (a value would replace the output)
        feat["size"] = tuple(output.shape[-2:])

    h1 = model.input_proj.register_forward_hook(size_hook) if hasattr(model, "input_proj") else None
    h2 = attn.register_forward_pre_hook(ks_hook if is_ks else mha_hook, with_kwargs=True)
    try:
        with torch.no_grad():
            images = model.preprocess_image(batched_inputs)
            targets = model.prepare_targets(batched_inputs)
            if is_ks:
                with _teacher_path(model):
                    model.forward_raw(images, targets)
            else:
                model.eval()
                model.forward_raw(images, None)
    finally:
        h2.remove()
        if h1 is not None:
            h1.remove()
    if "x_qk" not in rec:
        raise RuntimeError("visualize_attention: the last encoder layer's attention was not called; "
                           "is the model single-scale DETR-like?")
    kpm = rec.get("key_padding_mask")
    q = F.linear(rec["x_qk"], W[:C], b[:C])
    k = F.linear(rec.get("k_in", rec["x_qk"]), W[C:2 * C], b[C:2 * C])
    out = {"student": _weights(q, k, heads, kpm)[0]}
    if is_ks and "xt_qk" in rec and W.shape[0] >= 5 * C and getattr(attn, "mode", "triple") != "dual_share_a":
        qt = F.linear(rec["xt_qk"], W[3 * C:4 * C], b[3 * C:4 * C])
        kt = F.linear(rec["xt_qk"], W[4 * C:5 * C], b[4 * C:5 * C])
        out["teacher1"] = _weights(qt, kt, heads, kpm)[0]
    N = out["student"].shape[-1]
    h, w = feat.get("size") or (None, None)
    if h is None or h * w != N:
        raise RuntimeError(f"visualize_attention: cannot infer the token grid of {N} tokens")
    out.update(
        feat_size=(h, w), padded_size=tuple(images.tensor.shape[-2:]), image_size=tuple(images.image_sizes[0]),
        valid=(~kpm[0].bool()) if kpm is not None else torch.ones(N, dtype=torch.bool), targets=targets,
        mode=getattr(attn, "mode", None) if is_ks else None,
    )
    return out


def token_masks(boxes_xyxy: torch.Tensor, padded_size, feat_size, image_size) -> Dict[str, np.ndarray]:
    """GT token masks (h, w) with both rules of ``projects.ks_detr.modeling.gt_mask``."""
    from projects.ks_detr.modeling.gt_mask import gt_token_mask

    out = {}
    for rule in ("authors", "cell_overlap"):
        m = gt_token_mask([boxes_xyxy.cpu()], padded_size, feat_size, rule=rule, image_sizes=[image_size])
        out[rule] = m[:, 0].reshape(feat_size).numpy().astype(bool)
    return out


def choose_queries(fg: np.ndarray, valid: np.ndarray, boxes: np.ndarray, padded_size, k: int) -> List[int]:
    """Up to ``k`` foreground token indices: the token at each GT box centre first, then others spread evenly."""
    h, w = fg.shape
    H, W = padded_size
    chosen = []
    for x1, y1, x2, y2 in boxes:
        r = min(h - 1, int(((y1 + y2) / 2) / H * h))
        c = min(w - 1, int(((x1 + x2) / 2) / W * w))
        idx = r * w + c
        if fg[r, c] and idx not in chosen:
            chosen.append(idx)
    pool = [i for i in np.flatnonzero(fg.reshape(-1) & valid) if i not in chosen]
    if not pool and not chosen:  # no foreground token at all: fall back to valid tokens
        pool = list(np.flatnonzero(valid))
    if len(chosen) < k and pool:
        extra = np.linspace(0, len(pool) - 1, num=min(k - len(chosen), len(pool))).round().astype(int)
        chosen += [int(pool[i]) for i in extra]
    return [int(i) for i in chosen[:k]]


# ---------------------------------------------------------------------------------------------- drawing
def _grid_to_image(vec: np.ndarray, feat_size, padded_size, image_size) -> np.ndarray:
    """(N,) token values -> (h_img_tokens, w_img_tokens) grid over the unpadded image only."""
    h, w = feat_size
    grid = vec.reshape(h, w)
    rows = max(1, int(math.ceil(image_size[0] / padded_size[0] * h)))
    cols = max(1, int(math.ceil(image_size[1] / padded_size[1] * w)))
    return grid[:rows, :cols]


def _token_center(idx: int, feat_size, padded_size):
    h, w = feat_size
    r, c = divmod(idx, w)
    return ((c + 0.5) * padded_size[1] / w, (r + 0.5) * padded_size[0] / h)


def render(image: np.ndarray, rec: Dict, masks: Dict, queries: List[int], metadata, out_prefix: str) -> List[str]:
    from detrex.utils.visualizer import Visualizer, auto_scale, make_panel, save_image

    feat, padded, size = rec["feat_size"], rec["padded_size"], rec["image_size"]
    image = image[: size[0], : size[1]]
    scale = auto_scale(*image.shape[:2], target_short_side=256)
    inst = rec["targets"][0]
    boxes = inst["boxes_xyxy"].cpu().numpy()

    def canvas():
        return Visualizer(image, metadata, scale=scale)

    # token grid restricted to the image: the image covers the top-left part of the padded canvas
    rows = max(1, int(math.ceil(size[0] / padded[0] * feat[0])))
    cols = max(1, int(math.ceil(size[1] / padded[1] * feat[1])))
    # the grid cells cover padded pixels too: stretch the grid over the canvas area it covers, then crop
    def over_image(vis_fn, grid):
        cover_h, cover_w = rows * padded[0] / feat[0], cols * padded[1] / feat[1]
        big = np.asarray(grid, dtype=np.float32)
        # pad the image to the area the token grid covers, draw, crop back
        pad_img = np.zeros((int(round(cover_h)), int(round(cover_w)), 3), np.uint8)
        pad_img[: size[0], : size[1]] = image
        vis = Visualizer(pad_img, metadata, scale=scale)
        vis_fn(vis, big)
        for box, c in zip(boxes, inst["labels"].tolist()):
            vis.draw_box(box, (255, 255, 255), dashed=True, width=1)
        out = vis.get_output().get_image()
        return vis, out[: int(round(size[0] * scale)), : int(round(size[1] * scale))]

    written = []
    # --- GT mask panel
    gt = canvas()
    for box, c in zip(boxes, inst["labels"].tolist()):
        gt.draw_labeled_box(box, int(c))
    panels, titles = [gt.get_output().get_image()], [f"image + GT boxes\n{size[1]}x{size[0]} px, tokens {feat[1]}x{feat[0]}"]
    for rule, label in (("authors", "authors' rule\n(point sampling)"), ("cell_overlap", "cell_overlap rule\n(any pixel of the cell)")):
        m = masks[rule][:rows, :cols]
        _, img = over_image(lambda v, g: v.overlay_mask(g > 0.5, color=(255, 60, 60), alpha=0.5), m)
        panels.append(img)
        titles.append(f"M, {label}: {int(masks[rule].sum())}/{masks[rule].size} fg")
    path = out_prefix + "_gt_mask.png"
    save_image(make_panel(panels, titles, ncols=3, title="KS-DETR GT foreground/background token mask M"), path)
    written.append(path)

    # --- attention panel
    valid = rec["valid"].cpu().numpy()
    fg = masks["authors"].reshape(-1) & valid
    maps = {"student": rec["student"].mean(0).cpu().numpy()}
    if "teacher1" in rec:
        maps["teacher1"] = rec["teacher1"].mean(0).cpu().numpy()
    cols_def = [("student", "student A\n(= teacher 2's weights)")]
    if "teacher1" in maps:
        cols_def.append(("teacher1", "teacher 1 A^t\n(GT-enhanced Q^t, K^t)"))
    rows_def = [(f"query token {q}", ("query", q)) for q in queries]
    rows_def.append(("mean over all queries", valid))
    if fg.any():
        rows_def.append(("mean over fg queries", fg))
    cells, caps = [], []
    for row_name, sel in rows_def:
        row_maps = {}
        for key in maps:
            A = maps[key]
            row_maps[key] = A[sel[1]] if isinstance(sel, tuple) else A[sel].mean(0)
        for key, cap in cols_def:
            vec = row_maps[key]
            grid = _grid_to_image(vec, feat, padded, size)
            vis, img = over_image(lambda v, g: v.overlay_heatmap(g), grid)
            if isinstance(sel, tuple):
                img = _mark(img, sel[1], feat, padded, scale)
            cells.append(img)
            caps.append(f"{row_name}: {cap.splitlines()[0]}\nmax {vec.max():.3f}, entropy {_entropy(vec):.2f}")
        if "teacher1" in row_maps:
            diff = row_maps["teacher1"] - row_maps["student"]
            grid = _grid_to_image(np.abs(diff), feat, padded, size)
            _, img = over_image(lambda v, g: v.overlay_heatmap(g, cmap="viridis"), grid)
            cells.append(img)
            caps.append(f"{row_name}: |A^t - A|\nsum {np.abs(diff).sum():.3f} (max 2)")
    ncols = len(cols_def) + (1 if "teacher1" in maps else 0)
    title = ("Last encoder layer self-attention (mean over heads); heat = weight on each key token. "
             "Teacher 2 (share A) reuses the student's A with its own values V^t." if "teacher1" in maps else
             "Last encoder layer self-attention (mean over heads); baseline model: student only.")
    path = out_prefix + "_attention.png"
    save_image(make_panel(cells, caps, ncols=ncols, title=title, font_size=12), path)
    written.append(path)
    return written


def _mark(img: np.ndarray, q: int, feat, padded, scale) -> np.ndarray:
    from detrex.utils.visualizer import Visualizer

    x, y = _token_center(q, feat, padded)
    vis = Visualizer(img, scale=1.0)
    vis.draw_marker((x * scale, y * scale), color=(0, 255, 255))
    return vis.get_output().get_image()


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


# ---------------------------------------------------------------------------------------------- deformable
#: Level colours of the sampling panel (level 0 = the finest map), with names for the figure title.
LEVEL_COLORS = ((230, 159, 0), (86, 180, 233), (0, 158, 115), (204, 121, 167), (240, 228, 66), (213, 94, 0))
LEVEL_COLOR_NAMES = ("orange", "sky blue", "green", "pink", "yellow", "vermilion")


def find_deformable_attention(model):
    """(last encoder layer, its ``MultiScaleDeformableAttention``, is_ks), or None for a single-scale model.

    ``is_ks``: the attention is KS-DETR's ``KSMultiScaleTripleAttention`` (it has ``attention_weights_teacher``)
    and the detector has the ``ksgt`` module that builds the teacher tokens.
    """
    from detrex.layers import MultiScaleDeformableAttention

    try:
        layer = model.transformer.encoder.layers[-1]
        attn = layer.attentions[0]
    except (AttributeError, IndexError, TypeError):
        return None
    if not isinstance(attn, MultiScaleDeformableAttention):
        return None
    is_ks = hasattr(attn, "attention_weights_teacher") and hasattr(model, "ksgt")
    return layer, attn, is_ks


def capture_sampling(model, batched_inputs: List[Dict]) -> Dict:
    """Sampling locations and attention weights of the last (deformable) encoder layer, for every token.

    Forward hooks record the layer's query ``q = X + P`` (input of ``sampling_offsets``), for a KS model the
    teacher query ``q^t = X^t + P`` (input of ``attention_weights_teacher``) and the GT token mask given to
    ``ksgt``, and a pre-hook on the decoder records the level geometry (``spatial_shapes``, ``valid_ratios``,
    padding mask). Locations and weights are then recomputed with the attention's own steps
    (``compute_sampling_locations``, ``compute_attention_weights``) from the transformer's encoder reference
    points, i.e. exactly what the layer fed to the deformable-attention core.

    Returns a dict with ``locations`` (N, M, L, P, 2) normalized ``(x, y)`` over each level's (padded) map,
    ``weights``: {``student``, and for KS ``teacher1``, ``teacher2``} -> (N, M, L, P) (softmax over L*P per
    head), ``branch_locations``: the same keys -> (N, M, L, P, 2), ``spatial_shapes`` [(H_l, W_l)],
    ``level_start`` [L], ``valid`` (N,) bool, ``model_mask`` (N,) bool or None (the GT mask the KS model used),
    ``padded_size``, ``image_size``, ``targets``, ``is_ks``. N = sum_l H_l*W_l (level-major, row-major).

    Sharing (KS-DETR spec §4.4): offsets come from the student query only, so all branches sample the same
    locations; teacher 1 has its own weights A^t = softmax(attention_weights_teacher(q^t)) on the student's
    values (share V); teacher 2 uses the student's weights A on its own values (share A).
    """
    found = find_deformable_attention(model)
    if found is None:
        raise UserInputError(f"{type(model).__name__} has no deformable last encoder layer")
    _, attn, is_ks = found
    rec: Dict = {}

    def q_hook(module, args, output):
        rec.setdefault("q", args[0])

    def qt_hook(module, args, output):
        rec.setdefault("q_t", args[0])

    def mask_hook(module, args, kwargs, output):
        rec.setdefault("fg", args[1] if len(args) > 1 else kwargs.get("fg_mask"))

    def geometry_hook(module, args, kwargs):
        if "spatial_shapes" not in rec:
            rec.update({k: kwargs.get(k) for k in ("spatial_shapes", "valid_ratios", "key_padding_mask")})

    handles = [attn.sampling_offsets.register_forward_hook(q_hook),
               model.transformer.decoder.register_forward_pre_hook(geometry_hook, with_kwargs=True)]
    if is_ks:
        handles.append(attn.attention_weights_teacher.register_forward_hook(qt_hook))
        handles.append(model.ksgt.register_forward_hook(mask_hook, with_kwargs=True))
    try:
        with torch.no_grad():
            images = model.preprocess_image(batched_inputs)
            targets = model.prepare_targets(batched_inputs)
            if is_ks:
                with _teacher_path(model):
                    model.forward_raw(images, targets)
            else:
                model.eval()
                model.forward_raw(images, None)
            missing = [k for k in ("q", "spatial_shapes", "valid_ratios") + (("q_t",) if is_ks else ())
                       if rec.get(k) is None]
            if missing:
                raise RuntimeError(f"visualize_attention: the forward pass did not reach {missing} (hooks on the "
                                   "last encoder layer's sampling_offsets / attention_weights_teacher and on "
                                   "transformer.decoder)")
            shapes = rec["spatial_shapes"]
            sizes = [(int(h), int(w)) for h, w in shapes.tolist()]
            ref = model.transformer.get_reference_points(sizes, rec["valid_ratios"], rec["q"].device)
            if ref.shape[1] != rec["q"].shape[1]:
                raise RuntimeError(f"visualize_attention: {ref.shape[1]} reference points for "
                                   f"{rec['q'].shape[1]} tokens")
            loc = attn.compute_sampling_locations(rec["q"], ref, shapes)[0]
            weights = {"student": attn.compute_attention_weights(rec["q"])[0]}
            if is_ks:
                weights["teacher1"] = attn.compute_attention_weights(rec["q_t"], proj=attn.attention_weights_teacher)[0]
                weights["teacher2"] = weights["student"]  # share A (and the locations)
    finally:
        for h in handles:
            h.remove()
    n = loc.shape[0]
    kpm = rec.get("key_padding_mask")
    starts = np.cumsum([0] + [h * w for h, w in sizes])[:-1].tolist()
    fg = rec.get("fg")
    return dict(
        locations=loc, weights=weights, branch_locations={k: loc for k in weights}, spatial_shapes=sizes,
        level_start=starts, valid=(~kpm[0].bool()) if kpm is not None else torch.ones(n, dtype=torch.bool),
        model_mask=None if fg is None else fg[:, 0].bool(), padded_size=tuple(images.tensor.shape[-2:]),
        image_size=tuple(images.image_sizes[0]), targets=targets, is_ks=is_ks,
        mask_rule=getattr(getattr(model, "ksgt", None), "mask_rule", None),
    )


def level_token_masks(boxes_xyxy: torch.Tensor, padded_size, sizes, image_size) -> Dict[str, np.ndarray]:
    """Multi-level GT token masks (N,) bool per rule, as KS-Deformable-DETR builds them (each level resized
    independently from the same full-resolution box canvas, levels concatenated in token order)."""
    from projects.ks_detr.modeling.gt_mask import gt_token_mask_multi_level

    return {rule: gt_token_mask_multi_level([boxes_xyxy.cpu()], padded_size, sizes, rule=rule,
                                            image_sizes=[image_size])[:, 0].numpy().astype(bool)
            for rule in ("authors", "cell_overlap")}


def choose_level_queries(fg: np.ndarray, valid: np.ndarray, boxes: np.ndarray, rec: Dict, k: int) -> List[int]:
    """Up to ``k`` query tokens (indices into all N tokens) on the finest level, chosen as `choose_queries`."""
    sizes, starts = rec["spatial_shapes"], rec["level_start"]
    lvl = int(np.argmax([h * w for h, w in sizes]))
    (h, w), s = sizes[lvl], starts[lvl]
    picked = choose_queries(fg[s:s + h * w].reshape(h, w), valid[s:s + h * w], boxes, rec["padded_size"], k)
    return [s + i for i in picked]


def _token_level(idx: int, rec: Dict):
    """Flat token index -> (level, row, col)."""
    for lvl in reversed(range(len(rec["level_start"]))):
        if idx >= rec["level_start"][lvl]:
            r, c = divmod(idx - rec["level_start"][lvl], rec["spatial_shapes"][lvl][1])
            return lvl, r, c
    raise IndexError(idx)


def _branch_columns(is_ks: bool):
    if not is_ks:
        return [("student", "student")]
    return [("student", "student A (= teacher 2's A)"), ("teacher1", "teacher 1 A^t (from GT-enhanced q^t)")]


def render_sampling(image: np.ndarray, rec: Dict, masks: Dict, queries: List[int], metadata,
                    out_prefix: str) -> List[str]:
    """Write ``<prefix>_gt_mask.png`` (masks per level) and ``<prefix>_sampling.png`` (sampling points)."""
    from detrex.utils.visualizer import Visualizer, auto_scale, make_panel, save_image

    H, W = rec["padded_size"]
    size = rec["image_size"]
    canvas_img = np.zeros((H, W, 3), np.uint8)  # the padded canvas: locations are normalized over it
    canvas_img[: size[0], : size[1]] = image[: size[0], : size[1]]
    scale = auto_scale(H, W, target_short_side=256)
    font_size = max(12, int(round(min(H, W) * scale / 40)))  # captions stay readable on large images
    inst = rec["targets"][0]
    boxes, labels = inst["boxes_xyxy"].cpu().numpy(), inst["labels"].tolist()
    sizes, starts = rec["spatial_shapes"], rec["level_start"]
    L = len(sizes)
    written = []

    def token_center(idx):
        lvl, r, c = _token_level(idx, rec)
        h, w = sizes[lvl]
        return (c + 0.5) * W / w, (r + 0.5) * H / h

    def base(dashed_boxes=True):
        vis = Visualizer(canvas_img, metadata, scale=scale)
        for box in boxes:
            vis.draw_box(box, (255, 255, 255), dashed=dashed_boxes, width=1)
        return vis

    # --- GT mask panel: row 1 image + authors' rule per level, row 2 queries + cell_overlap rule per level
    gt = Visualizer(canvas_img, metadata, scale=scale)
    for box, c in zip(boxes, labels):
        gt.draw_labeled_box(box, int(c))
    qv = base()
    for j, q in enumerate(queries):
        qv.draw_marker(token_center(q), color=(0, 255, 255))
        x, y = token_center(q)
        qv.draw_text(f"q{j}", (x + 4, y + 4), color=(0, 0, 0), background=(0, 255, 255))
    level_txt = ", ".join(f"L{l} {h}x{w}" for l, (h, w) in enumerate(sizes))
    panels = {0: (gt.get_output().get_image(), f"image + GT boxes, {size[1]}x{size[0]} px\n({level_txt})"),
              L + 1: (qv.get_output().get_image(), f"query tokens {', '.join(f'q{j}' for j in range(len(queries)))}\n"
                                                   "(finest level, on the foreground)")}
    for row, rule, label in ((0, "authors", "authors' rule"), (1, "cell_overlap", "cell_overlap rule")):
        for lvl, ((h, w), s) in enumerate(zip(sizes, starts)):
            m = masks[rule][s:s + h * w].reshape(h, w)
            vis = base()
            vis.overlay_mask(m, color=(255, 60, 60), alpha=0.5)
            used = " (the model's)" if rule == rec.get("mask_rule") else ""
            panels[row * (L + 1) + 1 + lvl] = (vis.get_output().get_image(),
                                               f"M level {lvl} ({h}x{w}), {label}{used}\n{int(m.sum())}/{m.size} fg")
    order = sorted(panels)
    path = out_prefix + "_gt_mask.png"
    who = "KS-Deformable-DETR" if rec["is_ks"] else "Baseline model (no KS): KS-Deformable-DETR's"
    title = (f"{who} GT foreground/background token mask M, one per feature level\n"
             "(each resized from the same box canvas; tokens concatenated level-major)")
    save_image(make_panel([panels[i][0] for i in order], [panels[i][1] for i in order], ncols=L + 1, title=title,
                          font_size=font_size), path)
    written.append(path)

    # --- sampling panel: the padded canvas inside a grey margin, so points off the map (they read zeros) show
    my, mx = int(round(0.2 * H)), int(round(0.2 * W))
    framed = np.full((H + 2 * my, W + 2 * mx, 3), 96, np.uint8)
    framed[my:my + H, mx:mx + W] = canvas_img
    offset = np.array([mx, my], dtype=np.float64)

    def framed_base():
        vis = Visualizer(framed, metadata, scale=scale)
        vis.draw_box([mx, my, mx + W, my + H], (255, 255, 255), width=1)
        for box in boxes:
            vis.draw_box(np.asarray(box) + np.tile(offset, 2), (255, 255, 255), dashed=True, width=1)
        return vis

    loc = rec["locations"].cpu().numpy()  # (N, M, L, P, 2)
    weights = {k: v.cpu().numpy() for k, v in rec["weights"].items()}
    M, _, P = loc.shape[1:4]
    cols = _branch_columns(rec["is_ks"])
    colors = np.broadcast_to(np.asarray([LEVEL_COLORS[i % len(LEVEL_COLORS)] for i in range(L)],
                                        dtype=np.float64)[None, :, None], (M, L, P, 3)).reshape(-1, 3)
    cells, caps = [], []
    for j, q in enumerate(queries):
        lvl, r, c = _token_level(q, rec)
        pts = loc[q].reshape(-1, 2) * np.array([W, H], dtype=np.float64) + offset
        centre = tuple(np.asarray(token_center(q)) + offset)
        outside = int(((loc[q] < 0) | (loc[q] > 1)).any(-1).sum())
        vmax = max(float(weights[key][q].max()) for key, _ in cols)
        for k, (key, label) in enumerate(cols):
            wq = weights[key][q]
            vis = framed_base()
            vis.draw_weighted_points(pts, wq.reshape(-1), colors, vmax=vmax)
            vis.draw_marker(centre, color=(0, 255, 255))
            cells.append(vis.get_output().get_image())
            head = f"q{j}: token {q} (L{lvl} r{r} c{c})" if k == 0 else f"q{j}"
            mass = " ".join(f"L{l} {wq[:, l].sum() / M:.2f}" for l in range(L))
            caps.append(f"{head}\n{label}\nlevel mass (mean over heads): {mass}\n"
                        f"max {wq.max():.3f}; {outside}/{M * L * P} points off the map")
        if rec["is_ks"]:
            diff = (weights["teacher1"][q] - weights["student"][q]).reshape(-1)
            vis = framed_base()
            signed = np.where(diff[:, None] > 0, np.array([[220, 40, 40]]), np.array([[40, 90, 230]]))
            vis.draw_weighted_points(pts, np.abs(diff), signed, vmax=vmax)
            vis.draw_marker(centre, color=(0, 255, 255))
            cells.append(vis.get_output().get_image())
            caps.append(f"q{j}\nA^t - A at the same points\nred: teacher 1 higher, blue: lower\n"
                        f"sum |A^t - A| / heads = {np.abs(diff).sum() / M:.3f} (max 2)")
    legend = ", ".join(f"L{l} {LEVEL_COLOR_NAMES[l % len(LEVEL_COLOR_NAMES)]}" for l in range(L))
    title = (f"Last encoder layer deformable attention: {M} heads x {L} levels x {P} points per query (cyan ring); "
             f"dot area and opacity = weight (one scale per row), colour = level ({legend}).\n"
             "Grey frame: outside the feature maps (points there read zeros); dashed: GT boxes.\n")
    if rec["is_ks"]:
        title += ("All three branches sample the SAME locations (offsets from the student query only). Teacher 1 "
                  "(share V) has its own weights A^t from the GT-enhanced tokens;\nteacher 2 (share A) uses the "
                  "student's weights A with its own values V^t, so its column would repeat the student's.")
    else:
        title += "Baseline model: student only."
    path = out_prefix + "_sampling.png"
    save_image(make_panel(cells, caps, ncols=len(cols) + (1 if rec["is_ks"] else 0), title=title,
                          font_size=font_size), path)
    written.append(path)
    return written


def raw_sampling(rec: Dict, masks: Dict, queries: List[int]) -> Dict[str, np.ndarray]:
    """The ``--save-raw`` arrays of a deformable model (see the module docstring)."""
    raw = {"query_tokens": np.asarray(queries, dtype=np.int64),
           "spatial_shapes": np.asarray(rec["spatial_shapes"], dtype=np.int64),
           "level_start_index": np.asarray(rec["level_start"], dtype=np.int64),
           "valid": rec["valid"].cpu().numpy(), "mask_authors": masks["authors"],
           "mask_cell_overlap": masks["cell_overlap"],
           "padded_size": np.asarray(rec["padded_size"]), "image_size": np.asarray(rec["image_size"])}
    if rec["model_mask"] is not None:
        raw["mask_model"] = rec["model_mask"].cpu().numpy()
    for key, w in rec["weights"].items():
        raw[f"{key}_locations"] = rec["branch_locations"][key][queries].cpu().numpy()
        raw[f"{key}_weights"] = w[queries].cpu().numpy()
    return raw


def run_deformable(model, mapped: Dict, metadata, prefix: str, num_queries: int, save_raw: bool):
    """Capture, draw and (optionally) save one image of a deformable model; returns (written, summary)."""
    rec = capture_sampling(model, [mapped])
    masks = level_token_masks(rec["targets"][0]["boxes_xyxy"], rec["padded_size"], rec["spatial_shapes"],
                              rec["image_size"])
    valid = rec["valid"].cpu().numpy()
    rule = rec["mask_rule"] or "authors"
    queries = choose_level_queries(masks[rule], valid, rec["targets"][0]["boxes_xyxy"].cpu().numpy(), rec,
                                   num_queries)
    image = mapped["image"].permute(1, 2, 0).numpy()
    written = render_sampling(image, rec, masks, queries, metadata, prefix)
    if save_raw:
        np.savez_compressed(prefix + "_sampling.npz", **raw_sampling(rec, masks, queries))
        written.append(prefix + "_sampling.npz")
    summary = (f"levels {rec['spatial_shapes']}, {int(masks['authors'].sum())} fg tokens (authors) / "
               f"{int(masks['cell_overlap'].sum())} (cell_overlap), queries {queries}")
    return written, summary


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = get_parser()
    args, unknown = parser.parse_known_args(argv)
    bad = [u for u in unknown if "=" not in u or u.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    try:
        torch.set_grad_enabled(False)
        cfg = load_config(args.config_file, list(args.opts) + unknown)
        from detrex.data import DatasetCatalog, MetadataCatalog

        name = args.dataset or try_get_key(cfg, f"dataloader.{args.mapper}.dataset.names")
        if name is None:
            raise UserInputError("No dataset: pass --dataset NAME (a registered dataset)")
        name = name if isinstance(name, str) else list(name)[0]
        if name not in DatasetCatalog:
            raise UserInputError(f"Dataset {name!r} is not registered; registered: {sorted(DatasetCatalog)}")
        dicts = DatasetCatalog.get(name)
        mapper_cfg = try_get_key(cfg, f"dataloader.{args.mapper}.mapper")
        if mapper_cfg is None:
            raise UserInputError(f"The config has no dataloader.{args.mapper}.mapper")
        if args.mapper == "test":
            mapper_cfg.keep_annotations_in_test = True
        mapper = instantiate(mapper_cfg)
        seed = try_get_key(cfg, "train.seed", default=-1)
        if isinstance(seed, int) and seed >= 0:  # a random-init model is then the same on every run
            torch.manual_seed(seed)
        model = build_model(cfg, device=default_device(args.device))
        metadata = MetadataCatalog.get(name)
        deformable = find_deformable_attention(model) is not None
        os.makedirs(args.output, exist_ok=True)
        for idx in args.index:
            if not 0 <= idx < len(dicts):
                raise UserInputError(f"--index {idx} is out of range: {name!r} has {len(dicts)} images")
            mapped = mapper(dicts[idx])
            if "instances" not in mapped:
                raise UserInputError(f"image {idx} of {name!r} has no annotations")
            prefix = os.path.join(args.output, f"{name}_{idx:05d}")
            if deformable:
                written, summary = run_deformable(model, mapped, metadata, prefix, args.num_queries, args.save_raw)
                print(f"{name}[{idx}] ({dicts[idx]['file_name']}): {summary} -> {', '.join(written)}", flush=True)
                continue
            rec = capture_attention(model, [mapped])
            masks = token_masks(rec["targets"][0]["boxes_xyxy"], rec["padded_size"], rec["feat_size"],
                                rec["image_size"])
            valid = rec["valid"].cpu().numpy()
            queries = choose_queries(masks["authors"], valid, rec["targets"][0]["boxes_xyxy"].cpu().numpy(),
                                     rec["padded_size"], args.num_queries)
            image = mapped["image"].permute(1, 2, 0).numpy()
            written = render(image, rec, masks, queries, metadata, prefix)
            if args.save_raw:
                raw = {"student_heads": rec["student"].cpu().numpy(), "student": rec["student"].mean(0).cpu().numpy(),
                       "mask_authors": masks["authors"], "mask_cell_overlap": masks["cell_overlap"],
                       "query_tokens": np.asarray(queries), "feat_size": np.asarray(rec["feat_size"]),
                       "valid": valid}
                if "teacher1" in rec:
                    raw["teacher1_heads"] = rec["teacher1"].cpu().numpy()
                    raw["teacher1"] = rec["teacher1"].mean(0).cpu().numpy()
                np.savez_compressed(prefix + "_attention.npz", **raw)
                written.append(prefix + "_attention.npz")
            print(f"{name}[{idx}] ({dicts[idx]['file_name']}): tokens {rec['feat_size']}, "
                  f"{int(masks['authors'].sum())} fg tokens (authors) / {int(masks['cell_overlap'].sum())} "
                  f"(cell_overlap), queries {queries} -> {', '.join(written)}", flush=True)
    except USER_ERRORS as e:
        print(f"visualize_attention.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
