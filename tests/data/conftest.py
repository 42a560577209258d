"""Fixtures for the data tests: small COCO-format datasets written into tmp_path."""

import json
import os
import uuid

import numpy as np
import pytest
from PIL import Image


def write_coco(root, images, annotations, categories, image_sizes=None, seed=0):
    """Write PNG images (random content, sizes from `images`) and a COCO json under `root`; return (json, image_root)."""
    rng = np.random.default_rng(seed)
    img_dir = os.path.join(root, "images")
    os.makedirs(img_dir, exist_ok=True)
    for im in images:
        arr = rng.integers(0, 256, size=(im["height"], im["width"], 3), dtype=np.uint8)
        Image.fromarray(arr).save(os.path.join(img_dir, im["file_name"]))
    json_file = os.path.join(root, "instances.json")
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json_file, img_dir


@pytest.fixture
def coco_factory(tmp_path):
    """Build a small COCO dataset: call with (images, annotations, categories)."""

    def make(images, annotations, categories, subdir="coco"):
        return write_coco(str(tmp_path / subdir), images, annotations, categories)

    return make


@pytest.fixture
def unique_name():
    """A fresh dataset name; the registration (if any) is removed after the test."""
    from detrex.data import DatasetCatalog, MetadataCatalog

    names = []

    def make(prefix="test_ds"):
        n = f"{prefix}_{uuid.uuid4().hex[:8]}"
        names.append(n)
        return n

    yield make
    for n in names:
        DatasetCatalog.pop(n, None)
        MetadataCatalog.pop(n, None)
