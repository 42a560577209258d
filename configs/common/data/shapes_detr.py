"""The built-in synthetic shapes dataset (``shapes_train`` / ``shapes_val``, 128-160 px images, generated on
first use into ``$DETREX_CACHE``) with the same two-branch DETR augmentation as ``coco_detr.py``, scaled down.

Train: 50/50 between [flip, short side 112..144 (step 16), max 192] and [flip, short side 128/144/160, random
crop 96..128, short side 112..144, max 192]. Test: short side 128, max 192. Batch 8, no worker processes
(the images are tiny; raise ``num_workers`` on machines with spare cores).
"""

from omegaconf import OmegaConf

import detrex.data.transforms as T
from detrex.config import LazyCall as L
from detrex.data import (
    DetrDatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detrex.evaluation import COCOEvaluator

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="shapes_train"),
    mapper=L(DetrDatasetMapper)(
        augmentation=[
            L(T.RandomFlip)(),
            L(T.ResizeShortestEdge)(
                short_edge_length=(112, 128, 144),
                max_size=192,
                sample_style="choice",
            ),
        ],
        augmentation_with_crop=[
            L(T.RandomFlip)(),
            L(T.ResizeShortestEdge)(
                short_edge_length=(128, 144, 160),
                sample_style="choice",
            ),
            L(T.RandomCrop)(
                crop_type="absolute_range",
                crop_size=(96, 128),
            ),
            L(T.ResizeShortestEdge)(
                short_edge_length=(112, 128, 144),
                max_size=192,
                sample_style="choice",
            ),
        ],
        is_train=True,
        mask_on=False,
        img_format="RGB",
    ),
    total_batch_size=8,
    num_workers=0,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="shapes_val", filter_empty=False),
    mapper=L(DetrDatasetMapper)(
        augmentation=[
            L(T.ResizeShortestEdge)(
                short_edge_length=128,
                max_size=192,
            ),
        ],
        augmentation_with_crop=None,
        is_train=False,
        mask_on=False,
        img_format="RGB",
    ),
    num_workers=0,
)

dataloader.evaluator = L(COCOEvaluator)(
    dataset_name="${..test.dataset.names}",
)
