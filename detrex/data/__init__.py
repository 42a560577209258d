"""Data pipeline with detectron2's names and behaviour: catalogs, COCO loading, transforms, the DETR mapper,
samplers and loaders. Importing it registers the builtin datasets (``coco_2017_{train,val}``,
``shapes_{train,val}``) without touching any file."""

from . import detection_utils, transforms  # noqa: F401
from .build import (
    EmptyDatasetError,
    ResumableTrainLoader,
    TrainBatchStream,
    build_batch_data_loader,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
    trivial_batch_collator,
)
from .catalog import DatasetCatalog, DatasetNotRegisteredError, Metadata, MetadataCatalog
from .common import AspectRatioGroupedDataset, DatasetFromList, MapDataset, ToIterableDataset
from .dataset_mapper import DetrDatasetMapper
from .datasets import load_coco_json, register_coco_instances, register_shapes  # also registers builtins
from .datasets import ensure_thing_classes
from .samplers import InferenceSampler, TrainingSampler

__all__ = [
    "DatasetCatalog",
    "MetadataCatalog",
    "Metadata",
    "register_coco_instances",
    "register_shapes",
    "load_coco_json",
    "ensure_thing_classes",
    "get_detection_dataset_dicts",
    "build_detection_train_loader",
    "build_detection_test_loader",
    "build_batch_data_loader",
    "trivial_batch_collator",
    "DatasetFromList",
    "MapDataset",
    "ToIterableDataset",
    "AspectRatioGroupedDataset",
    "DetrDatasetMapper",
    "TrainingSampler",
    "InferenceSampler",
    "ResumableTrainLoader",
    "TrainBatchStream",
    "DatasetNotRegisteredError",
    "EmptyDatasetError",
    "detection_utils",
    "transforms",
]
