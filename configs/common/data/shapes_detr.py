"""The built-in synthetic shapes dataset (``shapes_train`` / ``shapes_val``, 128-160 px images, generated on
first use into ``$DETREX_CACHE``) with the two-branch DETR augmentation of ``coco_detr.py``, scaled down: this
file imports ``coco_detr.py`` and changes the dataset names, sizes, batch and workers.

Train: 50/50 between [flip, short side 112..144 (step 16), max 192] and [flip, short side 128/144/160, random
crop 96..128, short side 112..144, max 192]. Test: short side 128, max 192. Batch 8, no worker processes
(the images are tiny; raise ``num_workers`` on machines with spare cores).
"""

from detrex.config import get_config

dataloader = get_config("common/data/coco_detr.py").dataloader

dataloader.train.dataset.names = "shapes_train"
# branch 1: flip, short side 112..144 (COCO: 480..800), max 192 (COCO: 1333)
_plain = dataloader.train.mapper.augmentation
_plain[1].short_edge_length = (112, 128, 144)
_plain[1].max_size = 192
# branch 2: flip, short side 128/144/160 (COCO: 400/500/600), crop 96..128 (COCO: 384..600), then as branch 1
_crop = dataloader.train.mapper.augmentation_with_crop
_crop[1].short_edge_length = (128, 144, 160)
_crop[2].crop_size = (96, 128)
_crop[3].short_edge_length = (112, 128, 144)
_crop[3].max_size = 192
dataloader.train.total_batch_size = 8
dataloader.train.num_workers = 0

dataloader.test.dataset.names = "shapes_val"
dataloader.test.mapper.augmentation[0].short_edge_length = 128  # COCO: 800
dataloader.test.mapper.augmentation[0].max_size = 192
dataloader.test.num_workers = 0
