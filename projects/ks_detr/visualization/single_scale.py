"""Single-scale DETR encoders (DAB/Conditional/DN-DETR, KS and plain): the last encoder layer's self-attention.

Capture (:func:`capture_attention`): a forward pre-hook on the last encoder layer's attention records its
inputs; the weights are recomputed from the packed ``in_proj`` (rows [0:C] q, [C:2C] k, [3C:4C] q^t, [4C:5C]
k^t of a KS triple attention; a baseline layer is an ``nn.MultiheadAttention`` with rows [0:C] q, [C:2C] k),
as A = softmax(q k^T / sqrt(d)) with padded keys masked. Teacher 1 (share V) has its own A^t from the
GT-enhanced tokens; teacher 2 (share A) reuses the student's A, so it has no map of its own.

Shapes: tokens are sequence-first (N, B, C) with N = h*w, row-major over the last feature map (h, w) that
covers the padded image (H, W); attention maps are (heads, N, N), rows = queries, columns = keys.

Rendering (:func:`render_attention`): ``<prefix>_gt_mask.png`` (GT boxes and the token mask M with both rules
of ``projects.ks_detr.modeling.gt_mask``) and ``<prefix>_attention.png`` (head-averaged heatmaps over the key
tokens, cropped to the unpadded image); :func:`raw_attention` gives the ``--save-raw`` arrays.
"""
import math
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .common import UnsupportedModelError, forward_once


def find_last_encoder_attention(model):
    """(layer, attention module holding in_proj_weight, is_ks) of the last encoder layer."""
    try:
        layer = model.transformer.encoder.layers[-1]
        attn = layer.attentions[0].attn
    except AttributeError as e:
        raise UnsupportedModelError(
            f"{type(model).__name__}: expected model.transformer.encoder.layers[-1].attentions[0].attn "
            "(a single-scale DETR encoder) or a MultiScaleDeformableAttention at "
            "model.transformer.encoder.layers[-1].attentions[0] (a deformable encoder)") from e
    if not hasattr(attn, "in_proj_weight") or attn.in_proj_weight is None:
        raise UnsupportedModelError(
            f"{type(attn).__name__} has no packed in_proj_weight; cannot recompute its weights.")
    return layer, attn, hasattr(layer, "forward_teachers")


def attention_weights(q: torch.Tensor, k: torch.Tensor, heads: int,
                      key_padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """q, k (N, B, C) projected queries/keys, key_padding_mask (B, N) True = padded (or None)
    -> softmax(q k^T / sqrt(C / heads)) over keys, (B, heads, N, N), padded keys weighted 0."""
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
    ``padded_size`` (H, W), ``image_size`` (h_img, w_img), ``valid`` (N,) bool, ``targets`` (boxes absolute
    xyxy of the padded image) and ``mode`` (the KS attention's mode, None for a baseline model).
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
            images, targets = forward_once(model, batched_inputs, is_ks)
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
    out = {"student": attention_weights(q, k, heads, kpm)[0]}
    if is_ks and "xt_qk" in rec and W.shape[0] >= 5 * C and getattr(attn, "mode", "triple") != "dual_share_a":
        qt = F.linear(rec["xt_qk"], W[3 * C:4 * C], b[3 * C:4 * C])
        kt = F.linear(rec["xt_qk"], W[4 * C:5 * C], b[4 * C:5 * C])
        out["teacher1"] = attention_weights(qt, kt, heads, kpm)[0]
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
    """GT token masks (h, w) with both rules of ``projects.ks_detr.modeling.gt_mask``.

    ``boxes_xyxy``: (n, 4) absolute pixels of the padded image ``padded_size`` (H, W); ``feat_size`` (h, w).
    Returns {``authors``, ``cell_overlap``} -> (h, w) bool.
    """
    from projects.ks_detr.modeling.gt_mask import gt_token_mask

    out = {}
    for rule in ("authors", "cell_overlap"):
        m = gt_token_mask([boxes_xyxy.cpu()], padded_size, feat_size, rule=rule, image_sizes=[image_size])
        out[rule] = m[:, 0].reshape(feat_size).numpy().astype(bool)
    return out


def _grid_to_image(vec: np.ndarray, feat_size, padded_size, image_size) -> np.ndarray:
    """(N,) token values -> (h_img_tokens, w_img_tokens) grid over the unpadded image only."""
    h, w = feat_size
    grid = vec.reshape(h, w)
    rows = max(1, int(math.ceil(image_size[0] / padded_size[0] * h)))
    cols = max(1, int(math.ceil(image_size[1] / padded_size[1] * w)))
    return grid[:rows, :cols]


def _token_center(idx: int, feat_size, padded_size):
    """Token index -> centre ``(x, y)`` of its stride cell, absolute pixels of the padded image."""
    h, w = feat_size
    r, c = divmod(idx, w)
    return ((c + 0.5) * padded_size[1] / w, (r + 0.5) * padded_size[0] / h)


def render_attention(image: np.ndarray, rec: Dict, masks: Dict, queries: List[int], metadata,
                     out_prefix: str) -> List[str]:
    """Write ``<prefix>_gt_mask.png`` and ``<prefix>_attention.png``; returns their paths.

    ``image``: (H, W, 3) uint8 mapped image (cropped here to ``rec["image_size"]``); ``rec``: from
    :func:`capture_attention`; ``masks``: from :func:`token_masks`; ``queries``: token indices (rows of A).
    """
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
    panels = [gt.get_output().get_image()]
    titles = [f"image + GT boxes\n{size[1]}x{size[0]} px, tokens {feat[1]}x{feat[0]}"]
    for rule, label in (("authors", "authors' rule\n(point sampling)"),
                        ("cell_overlap", "cell_overlap rule\n(any pixel of the cell)")):
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




def raw_attention(rec: Dict, masks: Dict, queries: List[int]) -> Dict[str, np.ndarray]:
    """The ``--save-raw`` arrays of a single-scale model (see ``tools/visualize_attention.py``)."""
    raw = {"student_heads": rec["student"].cpu().numpy(), "student": rec["student"].mean(0).cpu().numpy(),
           "mask_authors": masks["authors"], "mask_cell_overlap": masks["cell_overlap"],
           "query_tokens": np.asarray(queries), "feat_size": np.asarray(rec["feat_size"]),
           "valid": rec["valid"].cpu().numpy()}
    if "teacher1" in rec:
        raw["teacher1_heads"] = rec["teacher1"].cpu().numpy()
        raw["teacher1"] = rec["teacher1"].mean(0).cpu().numpy()
    return raw
