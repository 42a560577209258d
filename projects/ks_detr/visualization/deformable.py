"""Deformable encoders (Deformable-DETR, DN-Deformable-DETR, KS and plain): the last encoder layer's sampling.

Capture (:func:`capture_sampling`): forward hooks record the last layer's query ``q = X + P`` (input of
``sampling_offsets``), for a KS model the teacher query ``q^t`` (input of ``attention_weights_teacher``) and
the GT token mask given to ``ksgt``; a pre-hook on the decoder records the level geometry. Locations and
weights are recomputed with the attention's own ``compute_sampling_locations`` /
``compute_attention_weights`` from the transformer's encoder reference points.

Shapes and coordinates: N = sum_l H_l*W_l tokens, level-major then row-major (level 0 = the finest map);
M heads, L levels, P points. Locations are (N, M, L, P, 2) normalized ``(x, y)``: (0, 0) and (1, 1) are the
top-left and bottom-right corners of each level's padded feature map, i.e. of the padded image (H, W), not
clipped (outside [0, 1] = off the map, reads zeros). Weights are (N, M, L, P), a softmax over L*P per head.

Rendering (:func:`render_sampling`): ``<prefix>_gt_mask.png`` (the KS GT mask of every level, both rules) and
``<prefix>_sampling.png`` (points drawn on the padded image in a grey frame, one row per query token);
:func:`raw_sampling` gives the ``--save-raw`` arrays.
"""
from typing import Dict, List

import numpy as np
import torch

from .common import UnsupportedModelError, choose_queries, forward_once

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
        raise UnsupportedModelError(f"{type(model).__name__} has no deformable last encoder layer")
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
            images, targets = forward_once(model, batched_inputs, is_ks)
            missing = [k for k in ("q", "spatial_shapes", "valid_ratios") + (("q_t",) if is_ks else ())
                       if rec.get(k) is None]
            if missing:
                raise RuntimeError(f"visualize_attention: the forward pass did not reach {missing} (hooks on the "
                                   "last encoder layer's sampling_offsets / attention_weights_teacher and on "
                                   "transformer.decoder)")
            shapes = rec["spatial_shapes"]
            sizes = [(int(h), int(w)) for h, w in shapes.tolist()]
            # KS models decode student and teachers in one pass (batch stacked, student first): keep the student's rows
            ratios = rec["valid_ratios"][: rec["q"].shape[0]]
            ref = model.transformer.get_reference_points(sizes, ratios, rec["q"].device)
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


def _token_center(idx: int, rec: Dict):
    """Flat token index -> centre ``(x, y)`` of its stride cell, absolute pixels of the padded image."""
    H, W = rec["padded_size"]
    lvl, r, c = _token_level(idx, rec)
    h, w = rec["spatial_shapes"][lvl]
    return (c + 0.5) * W / w, (r + 0.5) * H / h


def render_sampling(image: np.ndarray, rec: Dict, masks: Dict, queries: List[int], metadata,
                    out_prefix: str) -> List[str]:
    """Write ``<prefix>_gt_mask.png`` (masks per level) and ``<prefix>_sampling.png`` (sampling points).

    ``image``: (H', W', 3) uint8 mapped image (its ``rec["image_size"]`` top-left part is drawn on a black
    padded canvas of ``rec["padded_size"]``); ``rec``: from :func:`capture_sampling`; ``masks``: from
    :func:`level_token_masks`; ``queries``: indices into the N tokens. Returns the two paths.
    """
    from detrex.utils.visualizer import auto_scale

    H, W = rec["padded_size"]
    size = rec["image_size"]
    canvas_img = np.zeros((H, W, 3), np.uint8)  # the padded canvas: locations are normalized over it
    canvas_img[: size[0], : size[1]] = image[: size[0], : size[1]]
    scale = auto_scale(H, W, target_short_side=256)
    font_size = max(12, int(round(min(H, W) * scale / 40)))  # captions stay readable on large images
    written = [out_prefix + "_gt_mask.png", out_prefix + "_sampling.png"]
    _draw_level_masks(canvas_img, rec, masks, queries, metadata, scale, font_size, written[0])
    _draw_sampling_points(canvas_img, rec, queries, metadata, scale, font_size, written[1])
    return written


def _draw_level_masks(canvas_img, rec, masks, queries, metadata, scale, font_size, path):
    """GT mask panel: row 1 image + authors' rule per level, row 2 queries + cell_overlap rule per level."""
    from detrex.utils.visualizer import Visualizer, make_panel, save_image

    size = rec["image_size"]
    inst = rec["targets"][0]
    boxes, labels = inst["boxes_xyxy"].cpu().numpy(), inst["labels"].tolist()
    sizes, starts = rec["spatial_shapes"], rec["level_start"]
    L = len(sizes)

    def base(dashed_boxes=True):
        vis = Visualizer(canvas_img, metadata, scale=scale)
        for box in boxes:
            vis.draw_box(box, (255, 255, 255), dashed=dashed_boxes, width=1)
        return vis

    gt = Visualizer(canvas_img, metadata, scale=scale)
    for box, c in zip(boxes, labels):
        gt.draw_labeled_box(box, int(c))
    qv = base()
    for j, q in enumerate(queries):
        qv.draw_marker(_token_center(q, rec), color=(0, 255, 255))
        x, y = _token_center(q, rec)
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
    who = "KS-Deformable-DETR" if rec["is_ks"] else "Baseline model (no KS): KS-Deformable-DETR's"
    title = (f"{who} GT foreground/background token mask M, one per feature level\n"
             "(each resized from the same box canvas; tokens concatenated level-major)")
    save_image(make_panel([panels[i][0] for i in order], [panels[i][1] for i in order], ncols=L + 1, title=title,
                          font_size=font_size), path)


def _draw_sampling_points(canvas_img, rec, queries, metadata, scale, font_size, path):
    """Sampling panel: the padded canvas inside a grey margin, so points off the map (they read zeros) show."""
    from detrex.utils.visualizer import Visualizer, make_panel, save_image

    H, W = rec["padded_size"]
    boxes = rec["targets"][0]["boxes_xyxy"].cpu().numpy()
    L = len(rec["spatial_shapes"])
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
        centre = tuple(np.asarray(_token_center(q, rec)) + offset)
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
    save_image(make_panel(cells, caps, ncols=len(cols) + (1 if rec["is_ks"] else 0), title=title,
                          font_size=font_size), path)


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


