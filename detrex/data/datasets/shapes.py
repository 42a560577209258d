"""Shapes: a tiny deterministic synthetic detection dataset (COCO format), generated once into a cache.

Images show a few filled shapes (circle, square, triangle, ... ) on a noisy background. Boxes are exact: each
box is the tight box of the shape's drawn (visible) pixels, in COCO XYWH with pixel ``i`` spanning
``[i, i + 1)``. Category ids start at 1 (COCO style), so the contiguous-id mapping is exercised.

Files (``<root>`` = ``$DETREX_CACHE``, default ``~/.cache/detrex``)::

    <root>/shapes/<key>/{train,val}/000001.png ...
    <root>/shapes/<key>/annotations/instances_{train,val}.json
    <root>/shapes/<key>/params.json

``<key>`` hashes the generation parameters (:class:`ShapesConfig`) and the generator version, so changing a
parameter generates a new set. Generation happens on first use (``DatasetCatalog.get``), takes a few
seconds, and is atomic (written to a temporary directory, then renamed), so concurrent processes are safe.

Registration: ``shapes_train`` / ``shapes_val`` (defaults) on ``import detrex.data``; harder variants with
``register_shapes("shapes_hard_train", "train", max_objects=8, noise_std=20, allow_occlusion=True)``.
"""
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

__all__ = ["ShapesConfig", "SHAPE_NAMES", "generate_shapes", "get_shapes_dir", "ensure_shapes", "register_shapes"]

logger = logging.getLogger(__name__)

_GENERATOR_VERSION = 1
#: available shape classes, in category-id order (id = position + 1)
SHAPE_NAMES = ("circle", "square", "triangle", "diamond", "plus", "hexagon")
#: base RGB colour per class (used when ``color_by_class``)
SHAPE_COLORS = ((230, 60, 60), (60, 200, 70), (70, 100, 240), (235, 205, 50), (210, 70, 210), (50, 205, 215))


@dataclass(frozen=True)
class ShapesConfig:
    """Generation parameters (all sizes in pixels). The defaults are learnable quickly by a tiny DETR.

    Attributes:
        num_train, num_val: images per split.
        min_image_size, max_image_size: image height and width are drawn independently in this range.
        min_objects, max_objects: objects per image (fewer if they cannot be placed without overlap).
        min_object_size, max_object_size: side of an object's square box (before aspect jitter).
        max_aspect: each object's w/h ratio is drawn in ``[1/max_aspect, max_aspect]`` (1 = square boxes).
        num_classes: the first ``num_classes`` of :data:`SHAPE_NAMES` (1..6).
        color_by_class: each class has its own colour (with jitter); else random colours per object.
        noise_std: std of Gaussian pixel noise added to the whole image.
        clutter: number of random line strokes drawn on the background (distractors).
        allow_occlusion: objects may overlap (later ones on top); boxes are those of the visible pixels and
            objects less than 40% visible are not annotated (they are drawn over).
        seed: base seed; image ``i`` of split ``s`` uses ``np.random.default_rng([seed, s, i])``.
    """

    num_train: int = 400
    num_val: int = 100
    min_image_size: int = 128
    max_image_size: int = 160
    min_objects: int = 1
    max_objects: int = 3
    min_object_size: int = 32
    max_object_size: int = 64
    max_aspect: float = 1.0
    num_classes: int = 3
    color_by_class: bool = True
    noise_std: float = 6.0
    clutter: int = 0
    allow_occlusion: bool = False
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.num_classes <= len(SHAPE_NAMES):
            raise ValueError(f"ShapesConfig.num_classes must be in [1, {len(SHAPE_NAMES)}], got {self.num_classes}")
        if not (0 < self.min_image_size <= self.max_image_size):
            raise ValueError("ShapesConfig: need 0 < min_image_size <= max_image_size")
        if not (4 <= self.min_object_size <= self.max_object_size <= self.min_image_size):
            raise ValueError("ShapesConfig: need 4 <= min_object_size <= max_object_size <= min_image_size")
        if not (0 <= self.min_objects <= self.max_objects):
            raise ValueError("ShapesConfig: need 0 <= min_objects <= max_objects")
        if self.max_aspect < 1.0:
            raise ValueError("ShapesConfig.max_aspect must be >= 1")

    @property
    def thing_classes(self) -> List[str]:
        return list(SHAPE_NAMES[: self.num_classes])

    def key(self) -> str:
        """Short hash of the parameters and the generator version (the cache subfolder name)."""
        payload = json.dumps({"v": _GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return f"v{_GENERATOR_VERSION}-" + hashlib.sha1(payload.encode()).hexdigest()[:10]


def _cache_root() -> str:
    return os.path.expanduser(os.environ.get("DETREX_CACHE") or os.path.join("~", ".cache", "detrex"))


def get_shapes_dir(cfg: ShapesConfig, root: Optional[str] = None) -> str:
    """Directory holding the generated set for ``cfg`` (no file access)."""
    return os.path.join(root or _cache_root(), "shapes", cfg.key())


def _shape_mask(name: str, w: int, h: int) -> np.ndarray:
    """(h, w) bool mask of shape ``name`` filling a w x h box (no anti-aliasing)."""
    from PIL import Image, ImageDraw

    im = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(im)
    x1, y1 = w - 1, h - 1
    cx, cy = x1 / 2.0, y1 / 2.0
    if name == "circle":
        d.ellipse([0, 0, x1, y1], fill=255)
    elif name == "square":
        d.rectangle([0, 0, x1, y1], fill=255)
    elif name == "triangle":
        d.polygon([(0, y1), (x1, y1), (cx, 0)], fill=255)
    elif name == "diamond":
        d.polygon([(cx, 0), (x1, cy), (cx, y1), (0, cy)], fill=255)
    elif name == "plus":
        tw, th = max(2, w // 3), max(2, h // 3)
        d.rectangle([0, (h - th) // 2, x1, (h - th) // 2 + th - 1], fill=255)
        d.rectangle([(w - tw) // 2, 0, (w - tw) // 2 + tw - 1, y1], fill=255)
    elif name == "hexagon":
        q = w / 4.0
        d.polygon([(q, 0), (x1 - q, 0), (x1, cy), (x1 - q, y1), (q, y1), (0, cy)], fill=255)
    else:
        raise ValueError(f"unknown shape {name!r}")
    return np.asarray(im) > 0


def _render_image(cfg: ShapesConfig, rng: np.random.Generator) -> Tuple[np.ndarray, List[Dict]]:
    """One (H, W, 3) uint8 image and its objects ``[{"category": idx, "bbox": [x, y, w, h], "area": n}]``."""
    H = int(rng.integers(cfg.min_image_size, cfg.max_image_size + 1))
    W = int(rng.integers(cfg.min_image_size, cfg.max_image_size + 1))
    bg = rng.integers(0, 90, size=3)
    img = np.empty((H, W, 3), dtype=np.float32)
    img[:] = bg
    if cfg.clutter:
        from PIL import Image, ImageDraw

        pil = Image.fromarray(img.astype(np.uint8))
        d = ImageDraw.Draw(pil)
        for _ in range(cfg.clutter):
            pts = [tuple(int(v) for v in rng.integers(0, (W, H))) for _ in range(2)]
            d.line(pts, fill=tuple(int(c) for c in rng.integers(40, 200, size=3)), width=int(rng.integers(1, 4)))
        img = np.asarray(pil).astype(np.float32)

    n_obj = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    placed = []  # (cls, x0, y0, mask)
    occupied = []  # boxes (x0, y0, x1, y1) with a 2-px margin, when occlusion is not allowed
    for _ in range(n_obj):
        cls = int(rng.integers(0, cfg.num_classes))
        for _try in range(50):
            s = int(rng.integers(cfg.min_object_size, cfg.max_object_size + 1))
            ar = float(np.exp(rng.uniform(-np.log(cfg.max_aspect), np.log(cfg.max_aspect)))) if cfg.max_aspect > 1 else 1.0
            ow = max(4, min(W, int(round(s * np.sqrt(ar)))))
            oh = max(4, min(H, int(round(s / np.sqrt(ar)))))
            x0 = int(rng.integers(0, W - ow + 1))
            y0 = int(rng.integers(0, H - oh + 1))
            box = (x0 - 2, y0 - 2, x0 + ow + 2, y0 + oh + 2)
            if cfg.allow_occlusion or all(
                box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in occupied
            ):
                break
        else:
            continue  # could not place this object
        occupied.append(box)
        if cfg.color_by_class:
            color = np.clip(np.asarray(SHAPE_COLORS[cls]) + rng.integers(-20, 21, size=3), 0, 255)
        else:
            color = rng.integers(100, 256, size=3)
        mask = _shape_mask(SHAPE_NAMES[cls], ow, oh)
        img[y0 : y0 + oh, x0 : x0 + ow][mask] = color
        full = np.zeros((H, W), dtype=bool)
        full[y0 : y0 + oh, x0 : x0 + ow] = mask
        placed.append((cls, full))

    if cfg.noise_std > 0:
        img = img + rng.normal(0.0, cfg.noise_std, size=img.shape)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    objects = []
    covered = np.zeros((H, W), dtype=bool)
    for cls, full in reversed(placed):  # later objects are on top
        visible = full & ~covered
        covered |= full
        n_vis = int(visible.sum())
        if n_vis == 0 or n_vis < 0.4 * int(full.sum()):
            continue
        ys, xs = np.nonzero(visible)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        objects.append({"category": cls, "bbox": [x0, y0, x1 - x0, y1 - y0], "area": n_vis})
    objects.reverse()
    return img, objects


def generate_shapes(cfg: ShapesConfig, out_dir: str) -> None:
    """Write both splits of ``cfg`` into ``out_dir`` (PNG images + COCO jsons + params.json)."""
    from PIL import Image

    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(cfg.thing_classes)]
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    for split_idx, (split, num) in enumerate((("train", cfg.num_train), ("val", cfg.num_val))):
        os.makedirs(os.path.join(out_dir, split), exist_ok=True)
        images, annotations = [], []
        for i in range(num):
            rng = np.random.default_rng([cfg.seed, split_idx, i])
            img, objects = _render_image(cfg, rng)
            file_name = f"{i + 1:06d}.png"
            Image.fromarray(img).save(os.path.join(out_dir, split, file_name), compress_level=1)
            images.append({"id": i + 1, "file_name": file_name, "height": img.shape[0], "width": img.shape[1]})
            for obj in objects:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": obj["category"] + 1,
                        "bbox": obj["bbox"],
                        "area": obj["area"],
                        "iscrowd": 0,
                    }
                )
        coco = {
            "info": {"description": f"detrex synthetic shapes ({split}), generated with {dataclasses.asdict(cfg)}"},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        with open(os.path.join(out_dir, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump(coco, f)
    with open(os.path.join(out_dir, "params.json"), "w") as f:
        json.dump({"generator_version": _GENERATOR_VERSION, **dataclasses.asdict(cfg)}, f, indent=1)


def ensure_shapes(cfg: ShapesConfig, root: Optional[str] = None) -> str:
    """Generate the set for ``cfg`` under ``root`` unless already there; returns its directory.

    Safe under concurrency: each process writes into its own temporary directory and renames it into place;
    the loser of a race discards its copy.
    """
    final = get_shapes_dir(cfg, root)
    if os.path.isdir(final):
        return final
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    logger.info(f"Generating the shapes dataset ({cfg.num_train} train / {cfg.num_val} val images) into {final} ...")
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(final) + "-", dir=parent)
    try:
        generate_shapes(cfg, tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.isdir(final):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def register_shapes(name: str, split: str, root: Optional[str] = None, **params) -> ShapesConfig:
    """Register ``name`` as the ``split`` ("train" or "val") of the shapes set with ``ShapesConfig(**params)``.

    Cheap: no generation, no file access; the set is generated on first ``DatasetCatalog.get(name)``.
    ``root`` defaults to ``$DETREX_CACHE`` (read now) or ``~/.cache/detrex``. Returns the config.
    """
    from ..catalog import DatasetCatalog, MetadataCatalog
    from .coco import load_coco_json

    if split not in ("train", "val"):
        raise ValueError(f"register_shapes: split must be 'train' or 'val', got {split!r}")
    cfg = ShapesConfig(**params)
    root = root or _cache_root()
    base = get_shapes_dir(cfg, root)
    json_file = os.path.join(base, "annotations", f"instances_{split}.json")
    image_root = os.path.join(base, split)

    def _load():
        ensure_shapes(cfg, root)
        return load_coco_json(json_file, image_root, name)

    DatasetCatalog.register(name, _load)
    MetadataCatalog.get(name).set(
        thing_classes=cfg.thing_classes,
        thing_dataset_id_to_contiguous_id={i + 1: i for i in range(cfg.num_classes)},
        thing_colors=[tuple(c) for c in SHAPE_COLORS[: cfg.num_classes]],
        json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
        shapes_config=dataclasses.asdict(cfg),
    )
    return cfg
