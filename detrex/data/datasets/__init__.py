"""Dataset loading and registration; importing it registers the builtin datasets (see :mod:`.builtin`)."""
from .coco import convert_to_coco_dict, convert_to_coco_json, load_coco_json, read_coco_json, register_coco_instances
from .coco import ensure_thing_classes
from .shapes import SHAPE_NAMES, ShapesConfig, ensure_shapes, generate_shapes, get_shapes_dir, register_shapes
from . import builtin as _builtin  # noqa: F401  (registers coco_2017_* and shapes_*)

__all__ = [
    "ensure_thing_classes",
    "load_coco_json",
    "read_coco_json",
    "register_coco_instances",
    "convert_to_coco_dict",
    "convert_to_coco_json",
    "ShapesConfig",
    "SHAPE_NAMES",
    "generate_shapes",
    "get_shapes_dir",
    "ensure_shapes",
    "register_shapes",
]
