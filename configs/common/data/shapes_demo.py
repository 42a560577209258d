"""Data for the CPU shapes demos (``projects/*/configs/*_shapes_demo.py``): a short schedule from scratch.

Train: ``shapes_demo_train``, 2000 images drawn from the *same* distribution as ``shapes_train`` (its first 400
images are ``shapes_train``'s): with the demo's ~3000 iterations at batch 8 the model sees each image about 12
times instead of 60, so it learns shapes rather than memorizing images. Generated once on first use (about 20
seconds on 2 cores) into ``$DETREX_CACHE``. Augmentation: flip + short side 112/128/144 (max 192); the random crop
branch of ``shapes_detr.py`` is left out (cut shapes are harder and slow down a short schedule).

Test: ``shapes_val`` itself (100 images, short side 128, max 192), so the demo's AP is the default set's AP.
"""

from omegaconf import OmegaConf

import detrex.data.transforms as T
from detrex.config import LazyCall as L
from detrex.data import (
    DatasetCatalog,
    DetrDatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detrex.data.datasets.shapes import register_shapes
from detrex.evaluation import COCOEvaluator

# same generation parameters (and seeds) as shapes_train/shapes_val except the number of training images
if "shapes_demo_train" not in DatasetCatalog:  # config files may be loaded many times in one process
    register_shapes("shapes_demo_train", "train", num_train=2000)

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="shapes_demo_train"),
    mapper=L(DetrDatasetMapper)(
        augmentation=[
            L(T.RandomFlip)(),
            L(T.ResizeShortestEdge)(
                short_edge_length=(112, 128, 144),
                max_size=192,
                sample_style="choice",
            ),
        ],
        augmentation_with_crop=None,
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
