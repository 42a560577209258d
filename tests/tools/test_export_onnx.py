"""tools/export_onnx.py: exit 0 with a passed check (fixed and dynamic), 1 when onnxruntime disagrees (file kept, worst
output named), 2 for a bad config, override or checkpoint (one line, no traceback)."""
import importlib.util
import json
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = os.path.join(REPO, "tests", "tools", "configs", "tiny_ks_dab_detr_shapes.py")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("export_onnx_tool", os.path.join(REPO, "tools", "export_onnx.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dynamic_export_checks_two_sizes(tool, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    rc = tool.main(["--config-file", CFG, "--output", str(out), "--size", "64x96", "--dynamic", "train.seed=3"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "batch 1 x 64x96" in text and "batch 2 x 48x120" in text and "check passed" in text
    model = onnx.load(str(out))
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    # the KS model exports its student: the tiny config's test resize, RGB, 20 detections
    assert (meta["min_size"], meta["max_size"], meta["input_format"], meta["topk"]) == (128, 192, "RGB", 20)
    assert meta["dynamic"] is True and meta["input_dtype"] == "uint8"
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    boxes, scores, classes = sess.run(None, {"images": np.zeros((3, 3, 50, 70), np.uint8),
                                             "image_sizes": np.array([[50, 70]] * 3)})
    assert boxes.shape == (3, 20, 4) and scores.shape == (3, 20) and classes.shape == (3, 20)


def test_fixed_float_export(tool, tmp_path, capsys):
    out = tmp_path / "f.onnx"
    rc = tool.main(["--config-file", CFG, "--output", str(out), "--size", "64x80", "--batch", "2",
                    "--input-dtype", "float32"])
    assert rc == 0, capsys.readouterr()
    inp = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_inputs()[0]
    assert inp.shape == [2, 3, 64, 80] and inp.type == "tensor(float)"


def test_check_failure_exits_1_and_keeps_the_file(tool, tmp_path, capsys, monkeypatch):
    """onnxruntime giving other scores than PyTorch (simulated: +0.01 on every score) fails the check."""
    real_run = ort.InferenceSession.run

    def wrong_scores(self, output_names, feed, *args, **kwargs):
        boxes, scores, classes = real_run(self, output_names, feed, *args, **kwargs)
        return [boxes, scores + np.float32(0.01), classes]

    monkeypatch.setattr(ort.InferenceSession, "run", wrong_scores)
    out = tmp_path / "bad.onnx"
    rc = tool.main(["--config-file", CFG, "--output", str(out), "--size", "64x96"])
    err = capsys.readouterr().err
    assert rc == 1
    assert out.is_file()
    assert "worst output 'scores'" in err and str(out) in err


@pytest.mark.parametrize("case", ["missing_config", "bad_override", "missing_checkpoint", "corrupt_checkpoint"])
def test_bad_inputs_exit_2_with_one_line(tool, tmp_path, capsys, case):
    out = tmp_path / "x.onnx"
    args = {"missing_config": ["--config-file", str(tmp_path / "nope.py")],
            "bad_override": ["--config-file", CFG, "model.no_such_key=1"],
            "missing_checkpoint": ["--config-file", CFG, f"train.init_checkpoint={tmp_path / 'none.pth'}"],
            "corrupt_checkpoint": ["--config-file", CFG, f"train.init_checkpoint={tmp_path / 'bad.pth'}"]}[case]
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    rc = tool.main(args + ["--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [line for line in err.splitlines() if line.startswith("export_onnx.py: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not out.exists()
