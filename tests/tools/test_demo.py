"""demo/demo.py and demo/predictor.py on a tiny random KS-DAB-DETR and shapes images (CPU)."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = os.path.join(REPO, "tests", "tools", "configs", "tiny_ks_dab_detr_shapes.py")


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    from detrex.data.datasets.shapes import ShapesConfig, ensure_shapes

    root = str(tmp_path_factory.mktemp("cache"))
    return root, ensure_shapes(ShapesConfig(), root=root)


def _run(args, cache_root):
    env = dict(os.environ, DETREX_CACHE=cache_root, OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONPATH=REPO)
    return subprocess.run([sys.executable] + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _expected_size(h, w):
    s = min(4.0, max(1.0, 384 / min(h, w)))  # small images are upscaled so labels stay readable
    return round(w * s), round(h * s)


@pytest.mark.slow
def test_demo_cli_writes_annotated_images(shapes_root, tmp_path):
    root, data = shapes_root
    inputs = [os.path.join(data, "val", f) for f in ("000001.png", "000002.png")]
    out = tmp_path / "out"
    r = _run(["demo/demo.py", "--config-file", CFG, "--input", *inputs, "--output", str(out),
              "--confidence-threshold", "0.0", "--opts", "train.seed=3"], root)
    assert r.returncode == 0, r.stderr
    for path in inputs:
        src = np.asarray(Image.open(path).convert("RGB"))
        res = out / os.path.basename(path)
        assert res.is_file()
        img = np.asarray(Image.open(res).convert("RGB"))
        assert (img.shape[1], img.shape[0]) == _expected_size(*src.shape[:2])
        assert img.astype(np.float32).var() > 0
        assert "s ->" in r.stdout and os.path.basename(path) in r.stdout  # per-image time printed
    # with threshold 0 every one of the top-k boxes is drawn: the output differs from the plain upscaled input
    plain = np.asarray(Image.open(inputs[0]).convert("RGB").resize(Image.open(out / "000001.png").size, Image.BILINEAR))
    assert np.abs(np.asarray(Image.open(out / "000001.png").convert("RGB")).astype(int) - plain).max() > 100


@pytest.mark.slow
def test_demo_cli_errors_are_one_line(shapes_root, tmp_path):
    root, _ = shapes_root
    r = _run(["demo/demo.py", "--config-file", "missing.py", "--input", "x.png", "--output", str(tmp_path)], root)
    assert r.returncode == 2 and "Config file not found" in r.stderr and "Traceback" not in r.stderr
    r = _run(["demo/demo.py", "--config-file", CFG, "--input", str(tmp_path / "nope.png"), "--output", str(tmp_path)], root)
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_predictor_returns_boxes_in_input_pixels(shapes_root):
    import torch

    sys.path.insert(0, REPO)
    from demo.predictor import DefaultPredictor, load_config

    torch.manual_seed(0)
    torch.set_num_threads(1)
    root, data = shapes_root
    cfg = load_config(CFG, ["model.select_box_nums_for_evaluation=7"])
    pred = DefaultPredictor(cfg, device="cpu")
    assert not pred.model.training
    img = np.asarray(Image.open(os.path.join(data, "val", "000003.png")).convert("RGB"))
    inst = pred(img)["instances"]
    assert inst.image_size == img.shape[:2]
    boxes = inst.pred_boxes.tensor
    assert len(inst) <= 7 and boxes.shape[1] == 4
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= img.shape[1]).all() and (boxes[:, 3] <= img.shape[0]).all()
    assert ((inst.scores >= 0) & (inst.scores <= 1)).all()
    assert pred.metadata.thing_classes == ["circle", "square", "triangle"]
    with pytest.raises(ValueError, match="H, W, 3"):
        pred(img[:, :, 0])
