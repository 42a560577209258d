"""Check a detection dataset before training: every annotation read, every image decoded (in parallel).

Problems found, per kind (``KINDS``; "error" kinds make ``tools/check_dataset.py`` exit 1):

==============================  =======  ==================================================================
kind                            level    what
==============================  =======  ==================================================================
``unreadable_image``            error    missing file, not an image, or truncated/corrupt (full decode)
``size_mismatch``               error    decoded size (after EXIF rotation, as training reads it) differs
                                         from the json's ``width``/``height``
``bad_box``                     error    box that is not 4 finite numbers, or has width or height <= 0
``box_outside_image``           error    a valid box that reaches more than ``box_tolerance`` pixels outside
                                         the image (json size)
``unknown_category``            error    ``category_id`` not in ``categories``
``duplicate_annotation_id``     error    an annotation id used more than once (one entry per id)
``duplicate_image_id``          error    an image id used more than once
``orphan_annotation``           error    annotation whose ``image_id`` is not an image
``image_without_annotations``   info     image with no annotation (kept for evaluation, dropped in training)
==============================  =======  ==================================================================

Sources: a COCO json + image folder (:func:`check_coco_json`), or a registered dataset (:func:`check_registered`):
its raw json when the metadata has ``json_file``/``image_root`` (``register_coco_instances``, shapes), so that
problems :func:`~detrex.data.load_coco_json` would refuse are listed too; else its dataset dicts. Boxes are COCO
XYWH in absolute pixels of the json's image size.
"""

import math
import os
import time
from collections import Counter, OrderedDict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = ["KINDS", "DatasetReport", "probe_image", "check_coco_dict", "check_coco_json", "check_registered"]

#: kind -> (level, description), in report order
KINDS: "OrderedDict[str, Tuple[str, str]]" = OrderedDict([
    ("unreadable_image", ("error", "unreadable or truncated image")),
    ("size_mismatch", ("error", "image size differs from the json")),
    ("bad_box", ("error", "box NaN/inf or width/height <= 0")),
    ("box_outside_image", ("error", "box outside the image")),
    ("unknown_category", ("error", "category id not in categories")),
    ("duplicate_annotation_id", ("error", "duplicate annotation id")),
    ("duplicate_image_id", ("error", "duplicate image id")),
    ("orphan_annotation", ("error", "annotation of an unknown image id")),
    ("image_without_annotations", ("info", "image without annotations")),
])


@dataclass
class DatasetReport:
    """Counts and the first offending items per kind. ``examples[kind]`` holds at most ``max_examples``
    strings; ``counts[kind]`` is the total."""

    name: str
    num_images: int = 0
    num_annotations: int = 0
    num_categories: int = 0
    max_examples: int = 5
    counts: Counter = field(default_factory=Counter)
    examples: Dict[str, List[str]] = field(default_factory=dict)
    decode_seconds: float = 0.0
    workers: int = 1

    def add(self, kind: str, example: str) -> None:
        if kind not in KINDS:
            raise KeyError(f"unknown problem kind {kind!r}")
        self.counts[kind] += 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < self.max_examples:
            shown.append(example)

    @property
    def num_errors(self) -> int:
        return sum(self.counts[k] for k, (level, _) in KINDS.items() if level == "error")

    @property
    def images_per_second(self) -> float:
        return self.num_images / self.decode_seconds if self.decode_seconds > 0 else float("nan")

    def to_dict(self) -> Dict:
        return {"name": self.name, "images": self.num_images, "annotations": self.num_annotations,
                "categories": self.num_categories, "errors": self.num_errors,
                "decode_seconds": round(self.decode_seconds, 3), "workers": self.workers,
                "problems": {k: {"level": KINDS[k][0], "count": self.counts[k], "first": self.examples.get(k, [])}
                             for k in KINDS}}

    def format(self) -> str:
        """A markdown table: every kind with its level, count and first offending items."""
        rows = [(desc, level, str(self.counts[k]), "; ".join(self.examples.get(k, [])) or "-")
                for k, (level, desc) in KINDS.items()]
        headers = ("problem", "level", "count", f"first offending (up to {self.max_examples})")
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
        out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows]
        return "\n".join(out)


def probe_image(path: str) -> Tuple[Optional[Tuple[int, int]], Optional[str]]:
    """Decode ``path`` fully (truncated files fail); ``((width, height), None)`` as training sees it (EXIF
    orientation applied, like :func:`~detrex.data.detection_utils.read_image`) or ``(None, reason)``."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            orientation = im.getexif().get(0x0112, 1)
            im.load()
            w, h = im.size
    except FileNotFoundError:
        return None, "file not found"
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        return None, " ".join(f"{type(e).__name__}: {e}".split())
    if orientation in (5, 6, 7, 8):  # transposed / rotated by 90 or 270 degrees
        w, h = h, w
    return (w, h), None


def _decode_all(paths: Sequence[str], workers: int, progress: bool) -> List[Tuple]:
    """``probe_image`` over ``paths`` in ``workers`` processes, in order, with a tqdm progress bar."""
    from tqdm import tqdm

    bar = dict(total=len(paths), desc="decoding images", unit="img", disable=not progress, smoothing=0.1)
    if workers <= 1 or len(paths) < 2:
        return [r for r in tqdm(map(probe_image, paths), **bar)]
    chunk = max(1, min(64, len(paths) // (workers * 8)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(probe_image, paths, chunksize=chunk), **bar))


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_coco_dict(dataset: Dict, image_root: str, name: str = "dataset", workers: int = 1,
                    progress: bool = False, box_tolerance: float = 1.0, max_examples: int = 5,
                    decode: bool = True) -> DatasetReport:
    """Check a parsed COCO instances dict whose ``file_name`` entries are relative to ``image_root``."""
    images = dataset.get("images") or []
    anns = dataset.get("annotations") or []
    cats = dataset.get("categories") or []
    report = DatasetReport(name, len(images), len(anns), len(cats), max_examples=max_examples, workers=workers)
    cat_ids = {c.get("id") for c in cats}

    by_id: Dict = {}
    for img in images:
        if img.get("id") in by_id:
            report.add("duplicate_image_id", f"image id {img.get('id')} ({img.get('file_name')})")
        by_id.setdefault(img.get("id"), img)
    seen_ann, duplicated = set(), set()
    num_anns = Counter()
    for a in anns:
        aid = a.get("id")
        if aid is not None and aid in seen_ann and aid not in duplicated:
            duplicated.add(aid)
            report.add("duplicate_annotation_id", f"annotation id {aid}")
        seen_ann.add(aid)
        img = by_id.get(a.get("image_id"))
        where = f"annotation {aid} (image {a.get('image_id')})"
        if img is None:
            report.add("orphan_annotation", f"annotation {aid}: image_id {a.get('image_id')!r}")
        else:
            num_anns[a.get("image_id")] += 1
        if a.get("category_id") not in cat_ids:
            report.add("unknown_category", f"{where}: category_id {a.get('category_id')!r}")
        box = a.get("bbox")
        if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(_is_number(v) for v in box)
                and box[2] > 0 and box[3] > 0):
            report.add("bad_box", f"{where}: bbox {box!r}")
        elif img is not None and _is_number(img.get("width")) and _is_number(img.get("height")):
            x, y, w, h = box
            t = box_tolerance
            if x < -t or y < -t or x + w > img["width"] + t or y + h > img["height"] + t:
                report.add("box_outside_image",
                           f"{where}: bbox {list(box)} in a {img['width']}x{img['height']} image")
    for img in images:
        if num_anns[img.get("id")] == 0:
            report.add("image_without_annotations", f"image {img.get('id')} ({img.get('file_name')})")

    if decode:
        paths = [os.path.join(image_root, str(img.get("file_name"))) for img in images]
        start = time.perf_counter()
        results = _decode_all(paths, workers, progress)
        report.decode_seconds = time.perf_counter() - start
        for img, path, (size, reason) in zip(images, paths, results):
            label = f"{img.get('file_name')} (image {img.get('id')})"
            if size is None:
                report.add("unreadable_image", f"{label}: {reason}")
            elif (img.get("width"), img.get("height")) != size and img.get("width") is not None:
                report.add("size_mismatch", f"{label}: json {img.get('width')}x{img.get('height')}, "
                                            f"file {size[0]}x{size[1]}")
    return report


def check_coco_json(json_file: str, image_root: str, name: Optional[str] = None, **kwargs) -> DatasetReport:
    """:func:`check_coco_dict` of a COCO json file (clear errors for a missing or invalid json)."""
    from .datasets.coco import read_coco_json

    dataset = read_coco_json(json_file)
    return check_coco_dict(dataset, image_root, name=name or os.path.basename(json_file), **kwargs)


def _dicts_as_coco(dicts: Iterable[Dict], thing_classes: Optional[Sequence[str]]) -> Dict:
    """Dataset dicts (absolute file names, any box mode) -> a COCO-like dict for :func:`check_coco_dict`."""
    from ..structures import BoxMode

    images, anns = [], []
    for i, d in enumerate(dicts):
        image_id = d.get("image_id", i)
        images.append({"id": image_id, "file_name": d.get("file_name"), "width": d.get("width"),
                       "height": d.get("height")})
        for a in d.get("annotations", []):
            box = a.get("bbox")
            mode = a.get("bbox_mode", BoxMode.XYWH_ABS)
            if isinstance(box, (list, tuple)) and len(box) == 4 and int(mode) == int(BoxMode.XYXY_ABS):
                box = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            anns.append({"id": a.get("id"), "image_id": image_id, "bbox": list(box) if box is not None else None,
                         "category_id": a.get("category_id")})
    num = len(thing_classes) if thing_classes is not None else 1 + max((a["category_id"] or 0 for a in anns),
                                                                       default=-1)
    return {"images": images, "annotations": anns, "categories": [{"id": i} for i in range(num)]}


def check_registered(name: str, **kwargs) -> DatasetReport:
    """Check the registered dataset ``name``: its raw COCO json when the metadata names one, else its dicts."""
    from .catalog import DatasetCatalog, MetadataCatalog

    if name not in DatasetCatalog:
        from .catalog import DatasetNotRegisteredError

        raise DatasetNotRegisteredError(
            f"Dataset '{name}' is not registered; registered: {', '.join(sorted(DatasetCatalog.keys()))}. "
            "Register it in a config and pass --config-file, or check files directly with --json and --images."
        )
    meta = MetadataCatalog.get(name)
    json_file, image_root = meta.get("json_file"), meta.get("image_root")
    if json_file and image_root:
        if not os.path.isfile(json_file):
            DatasetCatalog.get(name)  # datasets generated on first load (shapes) write their json now
        return check_coco_json(json_file, image_root, name=name, **kwargs)
    dicts = DatasetCatalog.get(name)
    return check_coco_dict(_dicts_as_coco(dicts, meta.get("thing_classes")), "", name=name, **kwargs)
