"""tools/check_dataset.py: a copy of generated shapes data with one truncated file, one bad box, one unknown
category and one duplicate annotation id reports exactly those (exit 1); the clean set reports nothing (exit 0);
every other kind is detected too; registered datasets (COCO json or plain dicts) and configs are accepted."""
import json
import os
import shutil
import subprocess
import sys
import uuid

import numpy as np
import pytest
from PIL import Image

from detrex.data import DatasetCatalog, MetadataCatalog
from detrex.data.dataset_check import KINDS, check_coco_dict, check_coco_json, check_registered, probe_image
from detrex.data.datasets.shapes import ShapesConfig, ensure_shapes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "tools", "check_dataset.py")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A generated shapes set (30 training images, 1..3 boxes each): (json, image folder)."""
    root = ensure_shapes(ShapesConfig(num_train=30, num_val=2), root=str(tmp_path_factory.mktemp("cache")))
    return os.path.join(root, "annotations", "instances_train.json"), os.path.join(root, "train")


def _cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, TOOL, *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def _broken_copy(shapes, dst):
    """The shapes copy of the acceptance test; returns what was broken."""
    json_file, images = shapes
    shutil.copytree(images, dst / "train")
    d = json.loads(open(json_file).read())
    truncated = d["images"][4]["file_name"]
    data = (dst / "train" / truncated).read_bytes()
    (dst / "train" / truncated).write_bytes(data[: len(data) // 2])
    anns = d["annotations"]
    anns[3]["bbox"][2] = -5.0  # bad box
    anns[7]["category_id"] = 99  # unknown category
    anns[11]["id"] = anns[10]["id"]  # duplicate id
    (dst / "train.json").write_text(json.dumps(d))
    return truncated, anns[3]["id"], anns[7]["id"], anns[10]["id"]


@pytest.mark.slow
def test_broken_copy_reports_exactly_the_four_problems(shapes, tmp_path):
    truncated, bad_box, unknown, dup = _broken_copy(shapes, tmp_path)
    r = _cli("--json", tmp_path / "train.json", "--images", tmp_path / "train", "--workers", 2,
             "--report", tmp_path / "report.json")
    assert r.returncode == 1, r.stderr[-2000:]
    assert "decoding images" in r.stderr and "30/30" in r.stderr  # the progress bar
    assert "4 error(s)" in r.stdout and "images/s" in r.stdout
    (report,) = json.loads((tmp_path / "report.json").read_text())
    counts = {k: v["count"] for k, v in report["problems"].items()}
    assert counts == {k: (1 if k in ("unreadable_image", "bad_box", "unknown_category",
                                      "duplicate_annotation_id") else 0) for k in KINDS}
    first = {k: v["first"] for k, v in report["problems"].items()}
    assert first["unreadable_image"][0].startswith(f"{truncated} (image 5): ") and "truncated" in first[
        "unreadable_image"][0]
    assert first["bad_box"][0].startswith(f"annotation {bad_box} ") and "-5.0" in first["bad_box"][0]
    assert first["unknown_category"][0].startswith(f"annotation {unknown} ") and "99" in first["unknown_category"][0]
    assert first["duplicate_annotation_id"] == [f"annotation id {dup}"]


@pytest.mark.slow
def test_clean_registered_dataset_passes(shapes, tmp_path):
    json_file, images = shapes
    cfg = tmp_path / "cfg.py"
    cfg.write_text(f"from detrex.data import register_coco_instances\n"
                   f"register_coco_instances('clean_shapes', {{}}, {json_file!r}, {images!r})\n"
                   "dataloader = dict(train=dict(dataset=dict(names='clean_shapes')))\n")
    r = _cli("--config-file", cfg, "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "clean_shapes: 30 images" in r.stdout and "clean_shapes: 0 error(s), OK" in r.stdout


def test_every_kind_is_found(tmp_path):
    for i, size in enumerate([(40, 30), (40, 30), (40, 30)]):
        Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "3.jpg").write_bytes(b"not an image")
    d = {
        "images": [{"id": 1, "file_name": "0.png", "width": 40, "height": 30},
                   {"id": 2, "file_name": "1.png", "width": 41, "height": 30},  # size mismatch
                   {"id": 2, "file_name": "2.png", "width": 40, "height": 30},  # duplicate image id
                   {"id": 4, "file_name": "3.jpg", "width": 40, "height": 30},  # unreadable
                   {"id": 5, "file_name": "missing.png", "width": 40, "height": 30}],  # unreadable (missing)
        "annotations": [
            {"id": 1, "image_id": 1, "bbox": [1, 1, 10, 10], "category_id": 1},
            {"id": 2, "image_id": 1, "bbox": [1, 1, float("nan"), 10], "category_id": 1},  # bad box
            {"id": 3, "image_id": 1, "bbox": [1, 1, 0, 10], "category_id": 1},  # bad box (zero width)
            {"id": 4, "image_id": 1, "bbox": [35, 1, 10, 10], "category_id": 1},  # outside (45 > 40 + 1)
            {"id": 5, "image_id": 1, "bbox": [-0.5, 1, 40.5, 10], "category_id": 1},  # within the 1 px tolerance
            {"id": 6, "image_id": 9, "bbox": [1, 1, 10, 10], "category_id": 1},  # orphan
            {"id": 7, "image_id": 2, "bbox": [1, 1, 10, 10], "category_id": 2},  # unknown category
            {"id": 7, "image_id": 2, "bbox": [1, 1, 10, 10], "category_id": 1},  # duplicate annotation id
        ],
        "categories": [{"id": 1, "name": "a"}],
    }
    report = check_coco_dict(d, str(tmp_path), decode=True)
    assert dict(report.counts) == {"size_mismatch": 1, "duplicate_image_id": 1, "unreadable_image": 2,
                                   "bad_box": 2, "box_outside_image": 1, "orphan_annotation": 1,
                                   "unknown_category": 1, "duplicate_annotation_id": 1,
                                   "image_without_annotations": 2}  # images 4 and 5
    assert report.num_errors == 10
    assert report.examples["size_mismatch"] == ["1.png (image 2): json 41x30, file 40x30"]
    assert "file not found" in " ".join(report.examples["unreadable_image"])


def test_exif_rotation_counts_like_training(tmp_path):
    img = Image.fromarray(np.zeros((30, 40, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotated 90 degrees: training sees 30x40
    img.save(tmp_path / "r.jpg", exif=exif)
    assert probe_image(str(tmp_path / "r.jpg")) == ((30, 40), None)


def test_registered_dicts_and_errors(tmp_path):
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "a.png")
    name = f"dicts_{uuid.uuid4().hex[:6]}"
    DatasetCatalog.register(name, lambda: [{"file_name": str(tmp_path / "a.png"), "image_id": 1, "height": 20,
                                            "width": 20, "annotations": [
                                                {"bbox": [2, 2, 30, 10], "bbox_mode": 0, "category_id": 3}]}])
    MetadataCatalog.get(name).thing_classes = ["x", "y"]
    report = check_registered(name)  # XYXY box reaching x = 30 > 20; class 3 of 2
    assert dict(report.counts) == {"box_outside_image": 1, "unknown_category": 1}
    r = _cli("--dataset", "nope_not_registered")
    assert r.returncode == 2 and "not registered" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "bad.json").write_text("{")
    r = _cli("--json", tmp_path / "bad.json", "--images", tmp_path)
    assert r.returncode == 2 and "is not valid JSON" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(FileNotFoundError):
        check_coco_json(str(tmp_path / "none.json"), str(tmp_path))
