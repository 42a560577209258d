"""Builtin datasets registered on ``import detrex.data`` (cheap: no file access, nothing generated).

- ``coco_2017_train`` / ``coco_2017_val``: under ``$DETREX_DATASETS`` (else ``$DETECTRON2_DATASETS``, else
  ``./datasets``, relative to the working directory), laid out as::

      coco/train2017/*.jpg
      coco/val2017/*.jpg
      coco/annotations/instances_train2017.json
      coco/annotations/instances_val2017.json

  A missing file or folder is reported when the dataset is first loaded, naming the expected path.
- ``shapes_train`` / ``shapes_val``: the synthetic set of :mod:`.shapes` (default parameters), generated on
  first load into ``$DETREX_CACHE`` (default ``~/.cache/detrex``).
"""
import os
from typing import Dict

from ..catalog import DatasetCatalog, MetadataCatalog
from .coco import load_coco_json
from .shapes import register_shapes

__all__ = ["COCO_CATEGORIES", "get_datasets_root", "register_all_coco", "register_all_shapes", "get_coco_instances_meta"]

# (dataset id, name) of the 80 COCO thing classes
COCO_CATEGORIES = [
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"),
    (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"),
    (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
    (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
    (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"),
]  # fmt: skip

_PREDEFINED_SPLITS_COCO = {
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
}


def get_datasets_root() -> str:
    """``$DETREX_DATASETS``, else ``$DETECTRON2_DATASETS``, else ``datasets`` (``~`` expanded)."""
    return os.path.expanduser(os.getenv("DETREX_DATASETS") or os.getenv("DETECTRON2_DATASETS") or "datasets")


def get_coco_instances_meta() -> Dict:
    assert len(COCO_CATEGORIES) == 80
    return {
        "thing_classes": [n for _, n in COCO_CATEGORIES],
        "thing_dataset_id_to_contiguous_id": {cid: i for i, (cid, _) in enumerate(COCO_CATEGORIES)},
    }


def _load_builtin_coco(name: str, root: str, image_dir: str, json_file: str):
    problems = [p for p in (json_file, image_dir) if not os.path.exists(p)]
    if problems:
        raise FileNotFoundError(
            f"Dataset '{name}' not found: expected {' and '.join(repr(p) for p in problems)}.\n"
            f"The builtin COCO datasets are looked up under the directory in $DETREX_DATASETS (or "
            f"$DETECTRON2_DATASETS), default './datasets' relative to the working directory; now '{root}'.\n"
            "Expected layout:\n"
            "  $DETREX_DATASETS/coco/train2017/        (images)\n"
            "  $DETREX_DATASETS/coco/val2017/          (images)\n"
            "  $DETREX_DATASETS/coco/annotations/instances_train2017.json\n"
            "  $DETREX_DATASETS/coco/annotations/instances_val2017.json\n"
            "Download COCO 2017 from https://cocodataset.org and set e.g. `export DETREX_DATASETS=/path/to/datasets`."
        )
    return load_coco_json(json_file, image_dir, name)


def register_all_coco(root: str) -> None:
    for name, (image_dir, json_file) in _PREDEFINED_SPLITS_COCO.items():
        image_dir = os.path.join(root, image_dir)
        json_file = os.path.join(root, json_file)
        DatasetCatalog.register(name, lambda n=name, i=image_dir, j=json_file: _load_builtin_coco(n, root, i, j))
        MetadataCatalog.get(name).set(
            json_file=json_file, image_root=image_dir, evaluator_type="coco", **get_coco_instances_meta()
        )


def register_all_shapes() -> None:
    register_shapes("shapes_train", "train")
    register_shapes("shapes_val", "val")


if "coco_2017_train" not in DatasetCatalog:  # guard against importlib.reload
    register_all_coco(get_datasets_root())
    register_all_shapes()
