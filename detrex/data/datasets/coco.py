"""COCO-format json <-> detectron2 dataset dicts (boxes only).

:func:`load_coco_json` follows detectron2: images sorted by id; ``thing_classes`` sorted by category id;
``thing_dataset_id_to_contiguous_id`` maps json category ids (any integers, e.g. 1..90 with gaps) to
``0..K-1`` and is stored in the dataset's metadata; every annotation's ``category_id`` becomes contiguous;
``iscrowd``/``bbox``/``category_id`` (+ ``extra_annotation_keys``) are kept with ``bbox_mode=XYWH_ABS``.

Bad data, per case:

============================================  ==============================================================
json file missing                              ``FileNotFoundError`` naming the path
json that does not parse                       ``ValueError`` naming the file, line, column and char offset
json without "images"/"annotations"/...       ``ValueError`` naming the file and the missing key
annotation whose image_id is not an image     ``ValueError``: count and the first annotation/image ids
annotation with a category_id not listed       ``ValueError``: file, annotation id, category id, known ids
  in "categories"
box with negative width or height              dropped at load, counted, one warning with the count
duplicate annotation ids                       ``ValueError``
image file missing or corrupt                  not checked at load (cheap); the mapper raises
                                               ``BadImageError`` naming the file, or skips it when
                                               ``on_bad_image="skip"`` (counted, logged)
============================================  ==============================================================
"""

import contextlib
import datetime
import io
import json
import logging
import os
from typing import Dict, List, Optional

from ...structures import BoxMode
from ..catalog import DatasetCatalog, MetadataCatalog

__all__ = [
    "ensure_thing_classes",
    "load_coco_json",
    "register_coco_instances",
    "convert_to_coco_dict",
    "convert_to_coco_json",
    "read_coco_json",
]

logger = logging.getLogger(__name__)


def read_coco_json(json_file: str) -> Dict:
    """Parse a COCO json with clear errors (missing file, parse position, missing top-level keys)."""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO json file not found: '{json_file}'")
    with open(json_file, "r", encoding="utf-8") as f:
        try:
            dataset = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"'{json_file}' is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno} (char {e.pos})"
            ) from e
        except UnicodeDecodeError as e:
            raise ValueError(f"'{json_file}' is not a UTF-8 text file (byte {e.start}): is it really a json?") from e
    if not isinstance(dataset, dict):
        raise ValueError(f"'{json_file}': a COCO json must be an object with 'images', 'annotations', 'categories'")
    for key in ("images", "categories"):
        if key not in dataset:
            raise ValueError(f"'{json_file}' has no '{key}' list; it is not a COCO instances json")
    return dataset


def ensure_thing_classes(metadata) -> Optional[List[str]]:
    """The class names of a dataset's metadata, read from its COCO json when the metadata lacks them.

    ``metadata.thing_classes`` is only filled in when the dataset is loaded (``DatasetCatalog.get``); tools that
    need names without loading the data (the demo, an evaluator) call this instead. When ``thing_classes`` is
    missing and the metadata has a ``json_file``, the json's ``categories`` are read and ``thing_classes`` (and
    ``thing_dataset_id_to_contiguous_id`` if missing) are set exactly as :func:`load_coco_json` sets them
    (categories sorted by id). A json that does not exist yet (a generated dataset such as shapes) is created
    by loading the registered dataset. Returns the names, or None when the metadata has neither.
    """
    if metadata is None:
        return None
    names = metadata.get("thing_classes")
    if names is not None:
        return list(names)
    json_file = metadata.get("json_file")
    if not json_file:
        return None
    name = metadata.get("name")
    if not os.path.isfile(json_file) and name in DatasetCatalog:
        DatasetCatalog.get(name)  # generates the files and fills the metadata
        if metadata.get("thing_classes") is not None:
            return list(metadata.thing_classes)
    cats = sorted(read_coco_json(json_file)["categories"], key=lambda c: c["id"])
    id_map = metadata.get("thing_dataset_id_to_contiguous_id")
    if id_map is None:
        id_map = {c["id"]: i for i, c in enumerate(cats)}
        metadata.thing_dataset_id_to_contiguous_id = id_map
    by_id = {c["id"]: c["name"] for c in cats}
    names = [None] * len(id_map)
    for dataset_id, contiguous in id_map.items():
        names[contiguous] = by_id.get(dataset_id, f"class {contiguous}")
    metadata.thing_classes = names
    logger.info(f"Class names of '{name}' read from '{json_file}': {names[:10]}{' ...' if len(names) > 10 else ''}")
    return list(names)


def _make_coco_api(dataset: Dict):
    """A pycocotools ``COCO`` object built from an already-parsed dict (no second read, index prints muted)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_coco_json(
    json_file: str,
    image_root: str,
    dataset_name: Optional[str] = None,
    extra_annotation_keys: Optional[List[str]] = None,
) -> List[Dict]:
    """Load a COCO instances json as a list of detectron2 dataset dicts (see module docstring).

    Args:
        json_file: path to the json.
        image_root: directory the json's ``file_name`` entries are relative to.
        dataset_name: when given, ``thing_classes`` and ``thing_dataset_id_to_contiguous_id`` are stored in
            ``MetadataCatalog.get(dataset_name)`` and category ids are mapped to contiguous ids.
        extra_annotation_keys: extra per-annotation keys to keep.

    Returns:
        ``[{"file_name", "height", "width", "image_id", "annotations": [{"bbox": [x, y, w, h],
        "bbox_mode": BoxMode.XYWH_ABS, "category_id", "iscrowd", ...}]}]``
    """
    dataset = read_coco_json(json_file)
    dataset.setdefault("annotations", [])
    images = {img["id"]: img for img in dataset["images"]}
    cat_ids = sorted(c["id"] for c in dataset["categories"])
    if len(set(cat_ids)) != len(cat_ids):
        raise ValueError(f"'{json_file}': duplicate category ids in 'categories': {cat_ids}")

    orphans = [a for a in dataset["annotations"] if a.get("image_id") not in images]
    if orphans:
        raise ValueError(
            f"'{json_file}': {len(orphans)} annotation(s) point to image ids that are not in 'images' "
            f"(first annotation ids {[a.get('id') for a in orphans[:5]]}, image ids "
            f"{[a.get('image_id') for a in orphans[:5]]}). Fix or remove these annotations."
        )
    ann_ids = [a.get("id") for a in dataset["annotations"]]
    if len(set(ann_ids)) != len(ann_ids):
        raise ValueError(f"Annotation ids in '{json_file}' are not unique!")
    coco_api = _make_coco_api(dataset)

    id_map = None
    if dataset_name is not None:
        meta = MetadataCatalog.get(dataset_name)
        cats = coco_api.loadCats(cat_ids)
        meta.thing_classes = [c["name"] for c in sorted(cats, key=lambda x: x["id"])]
        if cat_ids and not (min(cat_ids) == 1 and max(cat_ids) == len(cat_ids)) and "coco" not in dataset_name:
            logger.info(
                f"Category ids in '{json_file}' are not 1..{len(cat_ids)} ({cat_ids[:10]}...); they are mapped to "
                "contiguous ids 0..K-1 (kept in metadata 'thing_dataset_id_to_contiguous_id')."
            )
        id_map = {v: i for i, v in enumerate(cat_ids)}
        meta.thing_dataset_id_to_contiguous_id = id_map
    known_cats = set(cat_ids)

    img_ids = sorted(coco_api.imgs.keys())
    ann_keys = ["iscrowd", "bbox", "keypoints", "category_id"] + list(extra_annotation_keys or [])
    dataset_dicts = []
    num_negative = 0
    first_negative = None
    for image_id in img_ids:
        img_dict = coco_api.imgs[image_id]
        record = {
            "file_name": os.path.join(image_root, img_dict["file_name"]),
            "height": img_dict["height"],
            "width": img_dict["width"],
            "image_id": image_id,
        }
        objs = []
        for anno in coco_api.imgToAnns.get(image_id, []):
            if anno.get("ignore", 0) != 0:
                raise ValueError(
                    f"'{json_file}': annotation {anno.get('id')} has \"ignore\": the COCO 'ignore' flag is not supported"
                )
            obj = {key: anno[key] for key in ann_keys if key in anno}
            if "bbox" not in obj or len(obj["bbox"]) != 4:
                raise ValueError(
                    f"'{json_file}': annotation {anno.get('id')} of image {image_id} has no valid 'bbox' "
                    f"(got {anno.get('bbox')!r}); expected [x, y, width, height]."
                )
            if obj["bbox"][2] < 0 or obj["bbox"][3] < 0:
                num_negative += 1
                first_negative = first_negative or (anno.get("id"), list(obj["bbox"]))
                continue
            cid = obj.get("category_id")
            if cid not in known_cats:
                raise ValueError(
                    f"'{json_file}': annotation {anno.get('id')} has category_id={cid!r}, which is not in the json's "
                    f"'categories' (ids {cat_ids}). Add the category or fix the annotation."
                )
            obj["bbox_mode"] = BoxMode.XYWH_ABS
            if id_map is not None:
                obj["category_id"] = id_map[cid]
            objs.append(obj)
        record["annotations"] = objs
        dataset_dicts.append(record)
    if num_negative:
        logger.warning(
            f"'{json_file}': dropped {num_negative} annotation(s) with negative box width or height "
            f"(first: annotation {first_negative[0]}, bbox {first_negative[1]})."
        )
    logger.info(f"Loaded {len(dataset_dicts)} images in COCO format from {json_file}")
    return dataset_dicts


def register_coco_instances(name: str, metadata: Dict, json_file: str, image_root: str) -> None:
    """Register a COCO-format instances dataset as ``name``.

    Nothing is read now; the json is loaded by ``DatasetCatalog.get(name)``. ``metadata`` (may be ``{}``) is
    stored together with ``json_file``, ``image_root`` and ``evaluator_type="coco"``; ``thing_classes`` and
    the id map are filled in from the json when it is loaded (or may be given in ``metadata``).
    """
    if not isinstance(name, str):
        raise TypeError(f"register_coco_instances: name must be a str, got {name!r}")
    if not isinstance(json_file, (str, os.PathLike)) or not isinstance(image_root, (str, os.PathLike)):
        raise TypeError("register_coco_instances: json_file and image_root must be paths")
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata)


def convert_to_coco_dict(dataset_name: str) -> Dict:
    """A registered dataset (boxes only) -> a COCO instances dict. Category ids are the dataset ids when the
    metadata has ``thing_dataset_id_to_contiguous_id``, else the contiguous ids."""
    dataset_dicts = DatasetCatalog.get(dataset_name)
    metadata = MetadataCatalog.get(dataset_name)
    if hasattr(metadata, "thing_dataset_id_to_contiguous_id"):
        reverse_id_mapping = {v: k for k, v in metadata.thing_dataset_id_to_contiguous_id.items()}
        reverse_id_mapper = lambda contiguous_id: reverse_id_mapping[contiguous_id]  # noqa: E731
    else:
        reverse_id_mapper = lambda contiguous_id: contiguous_id  # noqa: E731
    categories = [{"id": reverse_id_mapper(i), "name": name} for i, name in enumerate(metadata.thing_classes)]

    images, annotations = [], []
    for image_id, image_dict in enumerate(dataset_dicts):
        coco_image = {
            "id": image_dict.get("image_id", image_id),
            "width": int(image_dict["width"]),
            "height": int(image_dict["height"]),
            "file_name": str(image_dict["file_name"]),
        }
        images.append(coco_image)
        for annotation in image_dict.get("annotations", []):
            bbox = annotation["bbox"]
            from_mode = annotation["bbox_mode"]
            xyxy = BoxMode.convert(list(bbox), from_mode, BoxMode.XYXY_ABS)
            xywh = BoxMode.convert(list(xyxy), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
            area = float(xywh[2] * xywh[3])
            annotations.append(
                {
                    "id": len(annotations) + 1,  # COCO ids start at 1
                    "image_id": coco_image["id"],
                    "bbox": [round(float(x), 3) for x in xywh],
                    "area": area,
                    "iscrowd": int(annotation.get("iscrowd", 0)),
                    "category_id": int(reverse_id_mapper(annotation["category_id"])),
                }
            )
    logger.info(f"Conversion to COCO format finished: #images: {len(images)}, #annotations: {len(annotations)}")
    info = {
        "date_created": str(datetime.datetime.now()),
        "description": "Automatically generated COCO json file for detrex.",
    }
    return {"info": info, "images": images, "categories": categories, "licenses": None, "annotations": annotations}


def convert_to_coco_json(dataset_name: str, output_file: str, allow_cached: bool = True) -> None:
    """Write :func:`convert_to_coco_dict` to ``output_file`` atomically (reused if present and allowed)."""
    os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
    if os.path.exists(output_file) and allow_cached:
        logger.warning(
            f"Using previously cached COCO format annotations at '{output_file}'. "
            "You need to clear the cache file if your dataset has been modified."
        )
        return
    logger.info(f"Converting annotations of dataset '{dataset_name}' to COCO format ...")
    coco_dict = convert_to_coco_dict(dataset_name)
    tmp_file = f"{output_file}.tmp.{os.getpid()}"
    with open(tmp_file, "w") as f:
        json.dump(coco_dict, f)
    os.replace(tmp_file, output_file)
