"""Drawing for detections, ground truth, token masks and attention maps (PIL; matplotlib only for colormaps).

A small stand-in for detectron2's ``Visualizer`` with the same entry points (``draw_instance_predictions``,
``draw_dataset_dict``, ``get_output().get_image()/save()``), used by ``demo/demo.py`` and the ``tools/visualize_*``
scripts. Conventions:

* images are ``(H, W, 3)`` uint8 **RGB** numpy arrays;
* boxes are **absolute XYXY pixels** of the image given to the visualizer (``Instances.pred_boxes`` /
  ``gt_boxes`` after the mapper, or dataset-dict boxes converted from their ``bbox_mode``);
* class ids are contiguous (``0 .. K-1``); names come from ``metadata.thing_classes`` and colours from
  ``metadata.thing_colors`` when present, else from :data:`PALETTE`;
* heatmaps are ``(h, w)`` float arrays on any grid; they are stretched to the image (nearest neighbour, so every
  token stays a visible cell) and normalised to their own maximum.

Small images (e.g. the 128-px shapes set) are upscaled with ``scale`` so labels stay readable.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "PALETTE",
    "class_color",
    "class_names_from_metadata",
    "auto_scale",
    "VisImage",
    "Visualizer",
    "heatmap_to_rgb",
    "make_panel",
    "save_image",
]

#: Readable, mutually distinct colours (Okabe-Ito + Tableau 10 shades), RGB 0-255; cycled by class id.
PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
    (204, 121, 167), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207), (127, 127, 127), (174, 199, 232),
    (255, 187, 120), (152, 223, 138),
)  # fmt: skip


def class_names_from_metadata(metadata) -> Optional[List[str]]:
    """``metadata.thing_classes`` as a list, or None when the metadata has none."""
    names = getattr(metadata, "thing_classes", None) if metadata is not None else None
    return list(names) if names else None


def class_color(class_id: int, metadata=None) -> Tuple[int, int, int]:
    """``metadata.thing_colors[class_id]`` when present, else ``PALETTE[class_id % len(PALETTE)]``."""
    colors = getattr(metadata, "thing_colors", None) if metadata is not None else None
    if colors and 0 <= int(class_id) < len(colors):
        return tuple(int(c) for c in colors[int(class_id)])[:3]
    return PALETTE[int(class_id) % len(PALETTE)]


def _label(class_id: int, score: Optional[float], names: Optional[Sequence[str]]) -> str:
    name = names[class_id] if names is not None and 0 <= class_id < len(names) else f"class {class_id}"
    return name if score is None else f"{name} {score:.0%}"


def auto_scale(height: int, width: int, target_short_side: int = 384, max_scale: float = 4.0) -> float:
    """Upscale factor (>= 1) that brings the short side of a small image near ``target_short_side``."""
    short = max(1, min(int(height), int(width)))
    return float(min(max_scale, max(1.0, target_short_side / short)))


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _contrast_text(rgb: Sequence[int]) -> Tuple[int, int, int]:
    """Black on light backgrounds, white on dark ones (relative luminance)."""
    r, g, b = (float(c) for c in rgb[:3])
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_image(img: np.ndarray) -> np.ndarray:
    img = _to_numpy(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"Visualizer: expected an (H, W, 3) RGB image, got an array of shape {img.shape}")
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img[:, :, :3])


class VisImage:
    """The drawing canvas; ``get_image()`` returns (H, W, 3) uint8 RGB, ``save(path)`` writes a PNG/JPEG."""

    def __init__(self, pil_image: Image.Image):
        self.pil = pil_image

    @property
    def width(self) -> int:
        return self.pil.width

    @property
    def height(self) -> int:
        return self.pil.height

    def get_image(self) -> np.ndarray:
        return np.asarray(self.pil.convert("RGB")).copy()

    def save(self, path: str) -> None:
        save_image(self.get_image(), path)


class Visualizer:
    """Draw boxes, labels, masks and heatmaps on one image.

    Args:
        img_rgb: (H, W, 3) uint8 RGB image (a torch tensor (H, W, 3) is accepted too).
        metadata: dataset metadata (``thing_classes``, optional ``thing_colors``), e.g.
            ``MetadataCatalog.get("shapes_val")``; None labels classes by id.
        scale: resize factor of the output (boxes given in input-image pixels are scaled with it).
        line_width, font_size: default derived from the output size.
    """

    def __init__(self, img_rgb, metadata=None, scale: float = 1.0, line_width: Optional[int] = None,
                 font_size: Optional[int] = None):
        img = _check_image(img_rgb)
        self.input_size = img.shape[:2]  # (H, W) of the input; boxes are in these pixels
        self.scale = float(scale)
        pil = Image.fromarray(img)
        if self.scale != 1.0:
            size = (max(1, round(img.shape[1] * self.scale)), max(1, round(img.shape[0] * self.scale)))
            pil = pil.resize(size, Image.BILINEAR)
        self.output = VisImage(pil)
        self.metadata = metadata
        self.names = class_names_from_metadata(metadata)
        short = min(pil.width, pil.height)
        self.line_width = int(line_width or max(2, round(short / 160)))
        self.font = _font(int(font_size or max(11, min(22, round(short / 24)))))

    # ------------------------------------------------------------------ primitives
    def draw_box(self, box_xyxy: Sequence[float], color=(255, 0, 0), dashed: bool = False, width: Optional[int] = None):
        """Rectangle outline; ``box_xyxy`` in input-image pixels."""
        x1, y1, x2, y2 = (float(v) * self.scale for v in box_xyxy)
        d = ImageDraw.Draw(self.output.pil)
        w = int(width or self.line_width)
        color = tuple(int(c) for c in color)
        if not dashed:
            d.rectangle([x1, y1, x2, y2], outline=color, width=w)
            return self
        dash = max(4, 3 * w)
        for (xa, ya, xb, yb) in ((x1, y1, x2, y1), (x1, y2, x2, y2), (x1, y1, x1, y2), (x2, y1, x2, y2)):
            length = max(abs(xb - xa), abs(yb - ya))
            n = max(1, int(length // dash))
            for i in range(0, n, 2):
                t0, t1 = i / n, min(1.0, (i + 1) / n)
                d.line([xa + (xb - xa) * t0, ya + (yb - ya) * t0, xa + (xb - xa) * t1, ya + (yb - ya) * t1],
                       fill=color, width=w)
        return self

    def draw_text(self, text: str, xy: Tuple[float, float], color=(255, 255, 255), background=None,
                  in_pixels_of_output: bool = False):
        """Text with an optional filled background box; ``xy`` is its top-left corner (kept inside the image)."""
        x, y = xy if in_pixels_of_output else (xy[0] * self.scale, xy[1] * self.scale)
        d = ImageDraw.Draw(self.output.pil)
        l, t, r, b = d.textbbox((0, 0), text, font=self.font)
        tw, th = r - l + 4, b - t + 4
        x = min(max(0.0, x), max(0.0, self.output.width - tw))
        y = min(max(0.0, y), max(0.0, self.output.height - th))
        if background is not None:
            d.rectangle([x, y, x + tw, y + th], fill=tuple(int(c) for c in background))
        d.text((x + 2 - l, y + 2 - t), text, fill=tuple(int(c) for c in color), font=self.font)
        return self

    def draw_labeled_box(self, box_xyxy, class_id: int, score: Optional[float] = None, dashed: bool = False):
        """Box in the class colour with ``"name 87%"`` on a filled tag above its top-left corner."""
        color = class_color(class_id, self.metadata)
        self.draw_box(box_xyxy, color, dashed=dashed)
        text = _label(int(class_id), score, self.names)
        d = ImageDraw.Draw(self.output.pil)
        l, t, r, b = d.textbbox((0, 0), text, font=self.font)
        x, y = box_xyxy[0] * self.scale, box_xyxy[1] * self.scale - (b - t + 4)
        if y < 0:  # no room above: put the tag inside the box
            y = box_xyxy[1] * self.scale
        return self.draw_text(text, (x, y), color=_contrast_text(color), background=color, in_pixels_of_output=True)

    def draw_marker(self, xy: Tuple[float, float], color=(255, 255, 255), size: Optional[int] = None):
        """A cross-hair ring (e.g. a query token) at ``xy`` in input-image pixels."""
        x, y = xy[0] * self.scale, xy[1] * self.scale
        s = int(size or 3 * self.line_width + 3)
        d = ImageDraw.Draw(self.output.pil)
        d.ellipse([x - s, y - s, x + s, y + s], outline=(0, 0, 0), width=self.line_width + 2)
        d.ellipse([x - s, y - s, x + s, y + s], outline=tuple(color), width=self.line_width)
        d.line([x - 2 * s, y, x - s, y], fill=tuple(color), width=self.line_width)
        d.line([x + s, y, x + 2 * s, y], fill=tuple(color), width=self.line_width)
        return self

    def draw_weighted_points(self, xy, weights, colors, vmax: Optional[float] = None,
                             max_radius: Optional[float] = None, min_alpha: float = 0.25):
        """Filled dots whose radius and opacity grow with a weight (e.g. deformable attention sampling points).

        Args:
            xy: (K, 2) ``(x, y)`` in input-image pixels; points outside the image are clipped by the canvas.
            weights: (K,) non-negative; radius ``max_radius * sqrt(w / vmax)`` (area proportional to the weight),
                opacity ``min_alpha + (1 - min_alpha) * w / vmax``; zero weights draw nothing.
            colors: one RGB colour or (K, 3) colours.
            vmax: the weight drawn at full size (default: the largest of ``weights``), so several canvases can
                share one scale.
            max_radius: output pixels (default ``3 * line_width + 2``).
        Heavier dots are drawn last (on top).
        """
        xy = _to_numpy(xy).reshape(-1, 2).astype(np.float64) * self.scale
        w = _to_numpy(weights).reshape(-1).astype(np.float64)
        if len(w) != len(xy):
            raise ValueError(f"draw_weighted_points: {len(xy)} points but {len(w)} weights")
        cols = np.asarray(colors, dtype=np.float64)
        cols = np.broadcast_to(cols.reshape(-1, 3) if cols.ndim > 1 else cols[None], (len(w), 3))
        top = float(vmax) if vmax is not None else (float(w.max()) if w.size else 0.0)
        if top <= 0:
            return self
        rmax = float(max_radius or 3 * self.line_width + 2)
        layer = Image.new("RGBA", self.output.pil.size, (0, 0, 0, 0))
        d = ImageDraw.Draw(layer)
        for i in np.argsort(w, kind="stable"):
            frac = min(1.0, max(0.0, w[i] / top))
            if frac <= 0:
                continue
            r = max(1.0, rmax * np.sqrt(frac))
            a = int(round(255 * (min_alpha + (1 - min_alpha) * frac)))
            x, y = xy[i]
            d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in cols[i]) + (a,),
                      outline=(0, 0, 0, a), width=1)
        self.output.pil = Image.alpha_composite(self.output.pil.convert("RGBA"), layer).convert("RGB")
        return self

    def overlay_mask(self, mask, color=(255, 64, 64), alpha: float = 0.45, outline: bool = True):
        """Blend ``color`` where ``mask`` (any (h, w) grid covering the image) is true."""
        mask = _to_numpy(mask).astype(bool)
        m = self._stretch(mask.astype(np.float32)) > 0.5
        base = np.asarray(self.output.pil.convert("RGB")).astype(np.float32)
        col = np.asarray(color, dtype=np.float32)[None, None]
        base = np.where(m[..., None], (1 - alpha) * base + alpha * col, base)
        self.output.pil = Image.fromarray(np.clip(np.rint(base), 0, 255).astype(np.uint8))
        if outline:
            self._draw_grid_outline(mask, color)
        return self

    def overlay_heatmap(self, heat, alpha: float = 0.6, cmap: str = "inferno", vmax: Optional[float] = None):
        """Blend a colour-mapped ``heat`` ((h, w) non-negative grid over the image) onto the image.

        Values are divided by ``vmax`` (default: the map's own maximum), so each map uses the full colour range.
        """
        heat = _to_numpy(heat).astype(np.float32)
        rgb = heatmap_to_rgb(self._stretch(heat), cmap=cmap, vmax=vmax).astype(np.float32)
        base = np.asarray(self.output.pil.convert("RGB")).astype(np.float32)
        gray = base.mean(axis=2, keepdims=True).repeat(3, axis=2)  # greyscale background keeps the map readable
        out = (1 - alpha) * gray + alpha * rgb
        self.output.pil = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
        return self

    def _stretch(self, grid: np.ndarray) -> np.ndarray:
        """Nearest-neighbour resize of a (h, w) grid to the output size."""
        im = Image.fromarray(grid.astype(np.float32), mode="F")
        return np.asarray(im.resize((self.output.width, self.output.height), Image.NEAREST))

    def _draw_grid_outline(self, mask: np.ndarray, color):
        """Outline the cells of a (h, w) token mask so individual tokens stay visible."""
        h, w = mask.shape
        sy, sx = self.output.height / h, self.output.width / w
        d = ImageDraw.Draw(self.output.pil)
        for r, c in zip(*np.nonzero(mask)):
            d.rectangle([c * sx, r * sy, (c + 1) * sx - 1, (r + 1) * sy - 1], outline=tuple(color), width=1)

    # ------------------------------------------------------------------ detectron2-style entry points
    def draw_instance_predictions(self, predictions, score_threshold: float = 0.0):
        """Draw an ``Instances`` with ``pred_boxes`` (absolute XYXY), ``scores``, ``pred_classes``.

        Boxes below ``score_threshold`` are skipped; the highest scores are drawn last (on top).
        """
        boxes = _to_numpy(predictions.pred_boxes.tensor if hasattr(predictions.pred_boxes, "tensor")
                          else predictions.pred_boxes).reshape(-1, 4)
        scores = _to_numpy(predictions.scores) if predictions.has("scores") else np.ones(len(boxes))
        classes = _to_numpy(predictions.pred_classes) if predictions.has("pred_classes") else np.zeros(len(boxes), int)
        keep = np.nonzero(scores >= score_threshold)[0]
        for i in keep[np.argsort(scores[keep], kind="stable")]:
            self.draw_labeled_box(boxes[i], int(classes[i]), float(scores[i]))
        return self.output

    def draw_gt_instances(self, instances, dashed: bool = False):
        """Draw an ``Instances`` with ``gt_boxes`` (absolute XYXY) and ``gt_classes``."""
        boxes = _to_numpy(instances.gt_boxes.tensor).reshape(-1, 4)
        classes = _to_numpy(instances.gt_classes) if instances.has("gt_classes") else np.zeros(len(boxes), int)
        for box, c in zip(boxes, classes):
            self.draw_labeled_box(box, int(c), None, dashed=dashed)
        return self.output

    def draw_dataset_dict(self, dic: Dict, dashed: bool = False):
        """Draw a dataset dict's ``annotations`` (``bbox`` in its ``bbox_mode``, contiguous ``category_id``)
        or, after a mapper, its ``instances``."""
        if "instances" in dic:
            return self.draw_gt_instances(dic["instances"], dashed=dashed)
        from detrex.structures import BoxMode

        for ann in dic.get("annotations", []):
            box = BoxMode.convert(list(ann["bbox"]), ann.get("bbox_mode", BoxMode.XYWH_ABS), BoxMode.XYXY_ABS)
            self.draw_labeled_box(box, int(ann["category_id"]), None, dashed=dashed)
        return self.output

    def get_output(self) -> VisImage:
        return self.output


def heatmap_to_rgb(heat: np.ndarray, cmap: str = "inferno", vmax: Optional[float] = None) -> np.ndarray:
    """(h, w) non-negative floats -> (h, w, 3) uint8 through a matplotlib colormap (0 .. vmax or the max)."""
    from matplotlib import colormaps

    heat = np.asarray(heat, dtype=np.float32)
    top = float(vmax) if vmax is not None else float(heat.max()) if heat.size else 0.0
    norm = heat / top if top > 0 else np.zeros_like(heat)
    return (colormaps[cmap](np.clip(norm, 0.0, 1.0))[..., :3] * 255).astype(np.uint8)


def make_panel(images: Sequence[np.ndarray], titles: Optional[Sequence[str]] = None, ncols: Optional[int] = None,
               pad: int = 6, title: Optional[str] = None, background=(255, 255, 255),
               font_size: int = 14) -> np.ndarray:
    """Grid of images (row-major) with a caption above each and an optional panel title; (H, W, 3) uint8.

    Images of different sizes are top-left aligned in cells of the largest size. Captions may contain
    newlines.
    """
    if len(images) == 0:
        raise ValueError("make_panel: no images")
    images = [_check_image(im) for im in images]
    titles = list(titles) if titles is not None else [""] * len(images)
    if len(titles) != len(images):
        raise ValueError(f"make_panel: {len(images)} images but {len(titles)} titles")
    ncols = int(ncols or len(images))
    nrows = (len(images) + ncols - 1) // ncols
    cell_h = max(im.shape[0] for im in images)
    cell_w = max(im.shape[1] for im in images)
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_h(s: str) -> int:
        if not s:
            return 0
        l, t, r, b = probe.multiline_textbbox((0, 0), s, font=font)
        return b - t + 6

    cap_h = max(text_h(t) for t in titles)
    head_h = text_h(title) + pad if title else 0
    W = ncols * cell_w + (ncols + 1) * pad
    if title:  # never clip the panel title
        l, t, r, b = probe.multiline_textbbox((0, 0), title, font=font)
        W = max(W, r - l + 2 * pad)
    H = head_h + nrows * (cell_h + cap_h) + (nrows + 1) * pad
    canvas = Image.new("RGB", (W, H), tuple(background))
    d = ImageDraw.Draw(canvas)
    if title:
        d.multiline_text((pad, pad), title, fill=(0, 0, 0), font=font)
    for k, (im, cap) in enumerate(zip(images, titles)):
        r, c = divmod(k, ncols)
        x = pad + c * (cell_w + pad)
        y = head_h + pad + r * (cell_h + cap_h + pad)
        if cap:
            d.multiline_text((x, y), cap, fill=(0, 0, 0), font=font)
        canvas.paste(Image.fromarray(im), (x, y + cap_h))
    return np.asarray(canvas).copy()


def save_image(img: np.ndarray, path: str) -> None:
    """Write an (H, W, 3) uint8 RGB array (format from the extension; parent folders are created)."""
    import os

    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    Image.fromarray(_check_image(img)).save(path)
