"""demo/demo.py --onnx: draws the exported model's detections (onnxruntime, no checkpoint) on a user image."""
import importlib.util
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from demo.predictor import build_model, load_config  # noqa: E402
from detrex.deploy.export import export_onnx  # noqa: E402
from tests.deploy.test_onnx_predictor import shapes_image  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = os.path.join(REPO, "tests", "tools", "configs", "tiny_ks_dab_detr_shapes.py")


def _demo_module():
    sys.path.insert(0, os.path.join(REPO, "demo"))  # demo.py imports its sibling `predictor`
    try:
        spec = importlib.util.spec_from_file_location("demo_cli", os.path.join(REPO, "demo", "demo.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(os.path.join(REPO, "demo"))
    return module


def test_demo_draws_onnx_detections(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DETREX_CACHE", str(tmp_path / "cache"))
    cfg = load_config(CFG)
    torch.manual_seed(0)
    onnx_path = str(tmp_path / "m.onnx")
    export_onnx(build_model(cfg), onnx_path, 64, 96, dynamic=True, cfg=cfg)
    image = shapes_image()
    Image.fromarray(image).save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    demo = _demo_module()
    rc = demo.main(["--config-file", CFG, "--onnx", onnx_path, "--input", str(tmp_path / "in.png"), "--output",
                    str(out), "--confidence-threshold", "0.0"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "20 detections" in captured.out  # threshold 0: all top-20 of the tiny model
    drawn = np.asarray(Image.open(out).convert("RGB")).astype(int)
    plain = np.asarray(Image.fromarray(image).resize((drawn.shape[1], drawn.shape[0]), Image.BILINEAR)).astype(int)
    assert np.abs(drawn - plain).max() > 100  # boxes were drawn
    rc = demo.main(["--config-file", CFG, "--onnx", str(tmp_path / "no.onnx"), "--input", str(tmp_path / "in.png"),
                    "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "ONNX file not found" in err and "Traceback" not in err
