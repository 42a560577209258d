"""Catalogs, COCO json loading (incl. each bad-data case), builtin registration and the shapes dataset."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from detrex.data import (
    DatasetCatalog,
    MetadataCatalog,
    get_detection_dataset_dicts,
    load_coco_json,
    register_coco_instances,
)
from detrex.data.datasets import builtin
from detrex.data.datasets.shapes import ShapesConfig, ensure_shapes, get_shapes_dir, register_shapes
from detrex.structures import BoxMode

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

IMAGES = [
    {"id": 5, "file_name": "a.png", "height": 20, "width": 30},
    {"id": 2, "file_name": "b.png", "height": 25, "width": 15},
    {"id": 9, "file_name": "c.png", "height": 10, "width": 10},  # no annotations
]
CATS = [{"id": 11, "name": "kiwi"}, {"id": 3, "name": "apple"}, {"id": 7, "name": "fig"}]


def _anns():
    return [
        {"id": 1, "image_id": 5, "category_id": 3, "bbox": [1, 2, 10, 5], "area": 50, "iscrowd": 0},
        {"id": 2, "image_id": 5, "category_id": 11, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 1},
        {"id": 3, "image_id": 2, "category_id": 7, "bbox": [3, 3, 5.5, 6.5], "area": 35.75, "iscrowd": 0},
    ]


def test_catalog_errors(unique_name):
    with pytest.raises(KeyError, match="not registered.*shapes_train"):
        DatasetCatalog.get("no_such_dataset")
    name = unique_name()
    DatasetCatalog.register(name, lambda: [{"x": 1}])
    assert DatasetCatalog.get(name) == [{"x": 1}] and name in DatasetCatalog.list()
    with pytest.raises(AssertionError, match="already registered"):
        DatasetCatalog.register(name, lambda: [])
    meta = MetadataCatalog.get(name)
    meta.thing_classes = ["a"]
    meta.thing_classes = ["a"]  # same value is fine
    with pytest.raises(AssertionError, match="different value"):
        meta.thing_classes = ["b"]
    with pytest.raises(AttributeError, match="thing_classes"):
        meta.no_such_key
    assert meta.get("no_such_key", 3) == 3


def test_load_coco_json_noncontiguous_ids(coco_factory, unique_name):
    json_file, root = coco_factory(IMAGES, _anns(), CATS)
    name = unique_name()
    dicts = load_coco_json(json_file, root, name)
    assert [d["image_id"] for d in dicts] == [2, 5, 9]  # sorted by id
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["apple", "fig", "kiwi"]  # sorted by category id 3, 7, 11
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1, 11: 2}
    d5 = dicts[1]
    assert d5["file_name"] == os.path.join(root, "a.png") and (d5["height"], d5["width"]) == (20, 30)
    assert [(a["category_id"], a["iscrowd"]) for a in d5["annotations"]] == [(0, 0), (2, 1)]
    assert d5["annotations"][0]["bbox"] == [1, 2, 10, 5] and d5["annotations"][0]["bbox_mode"] == BoxMode.XYWH_ABS
    assert dicts[0]["annotations"][0]["category_id"] == 1
    assert dicts[2]["annotations"] == []


def test_register_and_filter_empty(coco_factory, unique_name, caplog):
    json_file, root = coco_factory(IMAGES, _anns(), CATS)
    name = unique_name()
    register_coco_instances(name, {}, json_file, root)
    meta = MetadataCatalog.get(name)
    assert (meta.json_file, meta.image_root, meta.evaluator_type) == (json_file, root, "coco")
    with caplog.at_level(logging.INFO, logger="detrex"):
        train = get_detection_dataset_dicts(name, filter_empty=True)
    assert [d["image_id"] for d in train] == [2, 5]  # image 9 (no annotations) removed
    assert "kiwi: 0" in caplog.text  # class histogram counts non-crowd instances only
    assert len(get_detection_dataset_dicts([name], filter_empty=False)) == 3
    with pytest.raises(KeyError, match="not registered"):
        get_detection_dataset_dicts([name, "nope"])


def test_bad_json_reports_file_and_position(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(ValueError, match=r"broken\.json.*line 2, column 12"):
        load_coco_json(str(p), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        load_coco_json(str(tmp_path / "nothere.json"), str(tmp_path))
    q = tmp_path / "noimages.json"
    q.write_text('{"annotations": []}')
    with pytest.raises(ValueError, match="no 'images'"):
        load_coco_json(str(q), str(tmp_path))


def test_annotations_pointing_to_missing_images(coco_factory):
    anns = _anns() + [
        {"id": 10, "image_id": 77, "category_id": 3, "bbox": [0, 0, 1, 1], "iscrowd": 0},
        {"id": 11, "image_id": 78, "category_id": 3, "bbox": [0, 0, 1, 1], "iscrowd": 0},
    ]
    json_file, root = coco_factory(IMAGES, anns, CATS)
    with pytest.raises(ValueError, match=r"2 annotation\(s\) point to image ids.*\[10, 11\].*\[77, 78\]"):
        load_coco_json(json_file, root)


def test_negative_boxes_dropped_with_count(coco_factory, caplog):
    anns = _anns() + [
        {"id": 20, "image_id": 2, "category_id": 3, "bbox": [5, 5, -2, 3], "iscrowd": 0},
        {"id": 21, "image_id": 5, "category_id": 7, "bbox": [5, 5, 3, -1], "iscrowd": 0},
    ]
    json_file, root = coco_factory(IMAGES, anns, CATS)
    with caplog.at_level(logging.WARNING, logger="detrex"):
        dicts = load_coco_json(json_file, root)
    assert sum(len(d["annotations"]) for d in dicts) == 3
    assert "dropped 2 annotation(s) with negative box" in caplog.text


def test_unknown_category_is_an_error(coco_factory):
    anns = _anns() + [{"id": 30, "image_id": 2, "category_id": 4, "bbox": [0, 0, 2, 2], "iscrowd": 0}]
    json_file, root = coco_factory(IMAGES, anns, CATS)
    with pytest.raises(ValueError, match=r"annotation 30 has category_id=4.*\[3, 7, 11\]"):
        load_coco_json(json_file, root)


def test_builtin_coco_registration_and_missing_message(tmp_path, monkeypatch):
    for split in ("train", "val"):
        meta = MetadataCatalog.get(f"coco_2017_{split}")
        assert meta.json_file.endswith(os.path.join("coco", "annotations", f"instances_{split}2017.json"))
        assert meta.image_root.endswith(os.path.join("coco", f"{split}2017"))
        assert len(meta.thing_classes) == 80 and meta.thing_dataset_id_to_contiguous_id[90] == 79
        assert meta.evaluator_type == "coco"
    monkeypatch.delenv("DETREX_DATASETS", raising=False)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "d2"))
    assert builtin.get_datasets_root() == str(tmp_path / "d2")
    monkeypatch.setenv("DETREX_DATASETS", str(tmp_path / "dx"))
    assert builtin.get_datasets_root() == str(tmp_path / "dx")
    root = str(tmp_path / "dx")
    json_file = os.path.join(root, "coco/annotations/instances_val2017.json")
    with pytest.raises(FileNotFoundError) as e:
        builtin._load_builtin_coco("coco_2017_val", root, os.path.join(root, "coco/val2017"), json_file)
    msg = str(e.value)
    assert json_file in msg and "DETREX_DATASETS" in msg and "instances_train2017.json" in msg and "val2017" in msg


def test_shapes_deterministic_and_keyed(tmp_path):
    cfg = ShapesConfig(num_train=6, num_val=3)
    a, b = ensure_shapes(cfg, str(tmp_path / "a")), ensure_shapes(cfg, str(tmp_path / "b"))
    assert os.path.basename(a) == os.path.basename(b)
    for split in ("train", "val"):
        ja = json.load(open(os.path.join(a, "annotations", f"instances_{split}.json")))
        jb = json.load(open(os.path.join(b, "annotations", f"instances_{split}.json")))
        assert ja == jb
        for im in ja["images"]:
            np.testing.assert_array_equal(
                np.asarray(Image.open(os.path.join(a, split, im["file_name"]))),
                np.asarray(Image.open(os.path.join(b, split, im["file_name"]))),
            )
    assert [c["id"] for c in ja["categories"]] == [1, 2, 3]
    assert get_shapes_dir(ShapesConfig(num_train=6, num_val=3, noise_std=1.0), "r") != get_shapes_dir(cfg, "r")
    # idempotent; no temporary directories left behind
    assert ensure_shapes(cfg, str(tmp_path / "a")) == a
    assert os.listdir(os.path.dirname(a)) == [os.path.basename(a)]


def test_shapes_boxes_are_exact(tmp_path):
    cfg = ShapesConfig(
        num_train=12, num_val=0, noise_std=0.0, min_objects=1, max_objects=1, num_classes=6, max_aspect=1.5
    )
    d = ensure_shapes(cfg, str(tmp_path))
    coco = json.load(open(os.path.join(d, "annotations", "instances_train.json")))
    assert len(coco["annotations"]) == 12
    for ann in coco["annotations"]:
        im = coco["images"][ann["image_id"] - 1]
        arr = np.asarray(Image.open(os.path.join(d, "train", im["file_name"]))).astype(int)
        colors, counts = np.unique(arr.reshape(-1, 3), axis=0, return_counts=True)
        bg = colors[np.argmax(counts)] if counts.max() > arr.shape[0] * arr.shape[1] / 2 else None
        assert bg is not None
        ys, xs = np.nonzero(np.any(arr != bg, axis=2))
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]


def test_register_shapes_variant(tmp_path, unique_name):
    name = unique_name("shapes_hard")
    cfg = register_shapes(
        name,
        "val",
        root=str(tmp_path),
        num_train=2,
        num_val=5,
        max_objects=6,
        noise_std=20.0,
        allow_occlusion=True,
        clutter=3,
    )
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["circle", "square", "triangle"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}
    assert not os.path.exists(meta.json_file)  # registration is lazy
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 5 and os.path.isfile(meta.json_file) and os.path.isdir(meta.image_root)
    assert cfg.allow_occlusion and meta.shapes_config["clutter"] == 3
    with pytest.raises(ValueError):
        ShapesConfig(num_classes=7)


def test_builtin_shapes_metadata():
    meta = MetadataCatalog.get("shapes_val")
    assert meta.thing_classes == ["circle", "square", "triangle"] and meta.evaluator_type == "coco"
    assert meta.json_file.endswith(os.path.join("annotations", "instances_val.json"))


@pytest.mark.slow
def test_fresh_install_shapes_train_subprocess(tmp_path):
    """The acceptance command on an empty cache, plus: importing touches no file, env vars are honoured."""
    cache, ds = tmp_path / "cache", tmp_path / "ds"
    env = dict(os.environ, DETREX_CACHE=str(cache), DETREX_DATASETS=str(ds))
    env["PYTHONPATH"] = REPO + os.pathsep + os.environ.get("PYTHONPATH", "")
    cmd = [
        sys.executable,
        "-c",
        "from detrex.data import DatasetCatalog; print(len(DatasetCatalog.get('shapes_train')))",
    ]
    check = (
        "import os\n"
        "from detrex.data import DatasetCatalog, MetadataCatalog\n"
        f"assert not os.path.exists({str(cache)!r}), 'import must not generate anything'\n"
        "print(MetadataCatalog.get('coco_2017_val').json_file)\n"
        "try:\n    DatasetCatalog.get('coco_2017_val')\nexcept FileNotFoundError as e:\n    print('ERR', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", check], env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    expected_json = os.path.join(str(ds), "coco", "annotations", "instances_val2017.json")
    assert out.stdout.splitlines()[0] == expected_json
    assert "ERR Dataset 'coco_2017_val' not found" in out.stdout and "DETREX_DATASETS" in out.stdout

    out = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "400"
    assert os.listdir(cache / "shapes")[0].startswith("v1-")
