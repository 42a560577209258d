"""COCO 2017 data for DETR-family models (as detrex's ``configs/common/data/coco_detr.py``).

Train: per image, 50/50 between [flip, resize short side to 480..800 (step 32), max 1333] and the crop branch
[flip, resize to 400/500/600, random crop 384..600, resize 480..800, max 1333]; ``skip_bad_images`` decides what
an unreadable image does (stop the run, or skip and count it). Test: short side 800, max 1333.
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
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_train"),
    mapper=L(DetrDatasetMapper)(
        augmentation=[
            L(T.RandomFlip)(),
            L(T.ResizeShortestEdge)(
                short_edge_length=(480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800),
                max_size=1333,
                sample_style="choice",
            ),
        ],
        augmentation_with_crop=[
            L(T.RandomFlip)(),
            L(T.ResizeShortestEdge)(
                short_edge_length=(400, 500, 600),
                sample_style="choice",
            ),
            L(T.RandomCrop)(
                crop_type="absolute_range",
                crop_size=(384, 600),
            ),
            L(T.ResizeShortestEdge)(
                short_edge_length=(480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800),
                max_size=1333,
                sample_style="choice",
            ),
        ],
        is_train=True,
        mask_on=False,
        img_format="RGB",
    ),
    total_batch_size=16,
    num_workers=4,
    # False: an unreadable/truncated image (or one whose size differs from the json) stops training with a
    # message naming the file. True: it is logged once with its path, replaced by another sample and counted
    # ("bad_images_skipped" in metrics.json); the run stops once more than max_bad_image_fraction of the
    # dataset's files (at least one file is tolerated) were bad. tools/check_dataset.py finds them all first.
    skip_bad_images=False,
    max_bad_image_fraction=0.01,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=L(DetrDatasetMapper)(
        augmentation=[
            L(T.ResizeShortestEdge)(
                short_edge_length=800,
                max_size=1333,
            ),
        ],
        augmentation_with_crop=None,
        is_train=False,
        mask_on=False,
        img_format="RGB",
    ),
    num_workers=4,
)

dataloader.evaluator = L(COCOEvaluator)(
    dataset_name="${..test.dataset.names}",
)
