"""tools/visualize_data.py and tools/visualize_json_results.py on the shapes dataset."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = os.path.join(REPO, "tests", "tools", "configs", "tiny_ks_dab_detr_shapes.py")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from detrex.data.datasets.shapes import ShapesConfig, ensure_shapes

    root = str(tmp_path_factory.mktemp("cache"))
    return root, ensure_shapes(ShapesConfig(), root=root)


def _run(tool, args, root):
    env = dict(os.environ, DETREX_CACHE=root, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, f"tools/{tool}"] + args, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def _img(path):
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.astype(np.float32).var() > 0
    return img


def _has_colour(img, rgb, tol=40, n=50):
    return (np.abs(img.astype(int) - np.asarray(rgb)).sum(-1) < tol).sum() > n


@pytest.mark.slow
def test_visualize_data_after_mapper_and_raw(shapes, tmp_path):
    root, data = shapes
    r = _run("visualize_data.py", ["--config-file", CFG, "--split", "test", "--num-images", "2",
                                   "--output-dir", str(tmp_path)], root)
    assert r.returncode == 0, r.stderr
    out = _img(tmp_path / "dataloader_test_0000_000001.png")
    # the test mapper resizes the short side to 128, the visualizer upscales 3x for readable labels
    assert min(out.shape[:2]) == 384
    assert (tmp_path / "dataloader_test_0001_000002.png").is_file()
    r = _run("visualize_data.py", ["--config-file", CFG, "--source", "annotation", "--split", "test",
                                   "--num-images", "1", "--output-dir", str(tmp_path)], root)
    assert r.returncode == 0, r.stderr
    src = np.asarray(Image.open(os.path.join(data, "val", "000001.png")))
    out = _img(tmp_path / "annotation_test_0000_000001.png")
    s = 384 / min(src.shape[:2])
    assert out.shape[:2] == (round(src.shape[0] * s), round(src.shape[1] * s))
    assert "3 boxes" in r.stdout  # image 1 of shapes_val has three objects


@pytest.mark.slow
def test_visualize_json_results_side_by_side(shapes, tmp_path):
    root, data = shapes
    with open(os.path.join(data, "annotations", "instances_val.json")) as f:
        coco = json.load(f)
    anns = [a for a in coco["annotations"] if a["image_id"] == 1]
    results = [{"image_id": 1, "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9} for a in anns]
    results.append({"image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "score": 0.1})  # below threshold
    res = tmp_path / "coco_instances_results.json"
    res.write_text(json.dumps(results))
    r = _run("visualize_json_results.py", ["--input", str(res), "--output", str(tmp_path / "vis"),
                                           "--dataset", "shapes_val", "--conf-threshold", "0.5"], root)
    assert r.returncode == 0, r.stderr
    assert f"{len(anns)} predictions, {len(anns)} ground-truth boxes" in r.stdout
    img = _img(tmp_path / "vis" / "000001.png")
    src = np.asarray(Image.open(os.path.join(data, "val", "000001.png")))
    s = 384 / min(src.shape[:2])
    assert img.shape[1] >= 2 * round(src.shape[1] * s)  # predictions | ground truth
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = _run("visualize_json_results.py", ["--input", str(bad), "--output", str(tmp_path), "--dataset", "shapes_val"], root)
    assert r.returncode == 2 and "not valid JSON" in r.stderr
