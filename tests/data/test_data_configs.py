"""configs/common/data/{coco_detr,shapes_detr}.py: structure as detrex's, and the shapes config instantiates."""

import os

import torch

from detrex.config import LazyConfig, instantiate
from detrex.data import transforms as T
from detrex.data.datasets.shapes import ShapesConfig, get_shapes_dir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DETR_SIZES = [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800]


def _load(name):
    return LazyConfig.load(os.path.join(REPO, "configs", "common", "data", name))


def test_coco_detr_config_matches_detrex():
    dl = _load("coco_detr.py").dataloader
    assert dl.train.dataset.names == "coco_2017_train"
    assert dl.train.total_batch_size == 16 and dl.train.num_workers == 4
    m = dl.train.mapper
    assert m.is_train and m.img_format == "RGB" and not m.mask_on
    plain, crop = m.augmentation, m.augmentation_with_crop
    assert plain[0]._target_ is T.RandomFlip
    assert (
        list(plain[1].short_edge_length) == DETR_SIZES
        and plain[1].max_size == 1333
        and plain[1].sample_style == "choice"
    )
    assert list(crop[1].short_edge_length) == [400, 500, 600] and "max_size" not in crop[1]
    assert crop[2].crop_type == "absolute_range" and list(crop[2].crop_size) == [384, 600]
    assert list(crop[3].short_edge_length) == DETR_SIZES and crop[3].max_size == 1333
    assert dl.test.dataset.names == "coco_2017_val" and dl.test.dataset.filter_empty is False
    t = dl.test.mapper.augmentation[0]
    assert (t.short_edge_length, t.max_size) == (800, 1333) and dl.test.mapper.is_train is False
    assert dl.evaluator.dataset_name == "coco_2017_val"  # interpolated from test.dataset.names
    # the mapper builds with detectron2's test resize
    mapper = instantiate(dl.test.mapper)
    assert mapper.augmentation[0].get_transform(torch.zeros(480, 640, 3).numpy()).new_h == 800


def test_shapes_config_instantiates(tmp_path, unique_name):
    from detrex.data import register_shapes

    train_name, val_name = unique_name("shapes_train"), unique_name("shapes_val")
    register_shapes(train_name, "train", root=str(tmp_path), num_train=16, num_val=4)
    register_shapes(val_name, "val", root=str(tmp_path), num_train=16, num_val=4)
    cfg = _load("shapes_detr.py")
    dl = cfg.dataloader
    assert dl.train.dataset.names == "shapes_train" and dl.evaluator.dataset_name == "shapes_val"
    assert dl.train.total_batch_size == 8
    dl.train.dataset.names = train_name
    dl.train.seed = 0
    dl.test.dataset.names = val_name
    dl.evaluator.output_dir = str(tmp_path / "out")
    batch = next(iter(instantiate(dl.train)))
    assert len(batch) == 8
    for d in batch:
        h, w = d["image"].shape[1:]
        assert max(h, w) <= 192 and min(h, w) >= 96 and d["image"].dtype == torch.uint8
        assert d["instances"].image_size == (h, w)
    test = instantiate(dl.test)
    inputs = list(test)
    assert len(inputs) == 4 and all(min(x[0]["image"].shape[1:]) == 128 for x in inputs)
    assert instantiate(dl.evaluator)._dataset_name == val_name
    assert os.path.isdir(get_shapes_dir(ShapesConfig(num_train=16, num_val=4), str(tmp_path)))
