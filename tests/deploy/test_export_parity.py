"""ONNX export of one tiny model of every detector class (DAB, KS-DAB, Conditional, DN-DETR, Deformable, two-stage
Deformable, KS-Deformable, DN-Deformable): onnxruntime equals PyTorch within the documented tolerances, with a fixed
and with a dynamic batch/size; the exported wrapper equals the detector's own eval-mode inference."""
import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from detrex.deploy.export import ExportableDetector, example_inputs, export_onnx  # noqa: E402
from detrex.deploy.parity import BOX_TOL, SCORE_TOL, check_parity  # noqa: E402
from tests.deploy.tiny import CONFIGS, TOPK, tiny_model  # noqa: E402

H, W = 64, 96
NAMES = sorted(CONFIGS)


@pytest.fixture(scope="module")
def models():
    return {}


def _model(models, name):
    if name not in models:
        models[name] = tiny_model(name)
    return models[name]


def _export(models, name, tmp_path, dynamic):
    """Export the tiny ``name`` model at batch 1 x H x W; returns (model, path, onnxruntime session)."""
    model, cfg = _model(models, name)
    path = tmp_path / f"{name}.onnx"
    export_onnx(model, str(path), H, W, batch=1, dynamic=dynamic, cfg=cfg)
    return model, path, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _assert_ok(reports):
    for r in reports:
        assert r.ok, r.line()
        assert r.box_diff <= BOX_TOL and r.score_diff <= SCORE_TOL and r.class_mismatches == 0


@pytest.mark.parametrize("name", NAMES)
def test_fixed_export_matches_pytorch(name, models, tmp_path):
    model, path, sess = _export(models, name, tmp_path, dynamic=False)
    assert sess.get_inputs()[0].shape == [1, 3, H, W]
    assert [o.name for o in sess.get_outputs()] == ["boxes", "scores", "classes"]
    # the export inputs and another image of the same size, the second one partly padding
    inputs = [example_inputs(1, H, W), example_inputs(1, H, W, seed=3, image_sizes=[(H - 9, W - 21)])]
    _assert_ok(check_parity(str(path), model, inputs, session=sess))
    out = sess.run(None, {"images": inputs[0][0].numpy(), "image_sizes": inputs[0][1].numpy()})
    assert out[0].shape == (1, TOPK, 4) and out[2].dtype == np.int64
    with pytest.raises(Exception):  # fixed: another size is refused
        sess.run(None, {"images": np.zeros((1, 3, H + 32, W), np.uint8), "image_sizes": np.array([[H + 32, W]])})


@pytest.mark.parametrize("name", NAMES)
def test_dynamic_export_matches_pytorch(name, models, tmp_path):
    model, path, sess = _export(models, name, tmp_path, dynamic=True)
    b, _, h, w = sess.get_inputs()[0].shape
    assert all(isinstance(d, str) for d in (b, h, w))
    # another batch size and image size, with non-integer feature strides and a padded second image
    inputs = [example_inputs(1, H, W),
              example_inputs(2, 80, 120, seed=2, image_sizes=[(80, 120), (70, 105)]),
              example_inputs(1, 96, 72, seed=4)]
    _assert_ok(check_parity(str(path), model, inputs, session=sess))


@pytest.mark.parametrize("name", NAMES)
def test_wrapper_equals_eval_inference(name, models):
    """The exported computation (normalize, mask from image_sizes, top-k, scale) is DETRBase's eval forward."""
    model, _ = _model(models, name)
    images, sizes = example_inputs(2, 72, 88, seed=5, image_sizes=[(72, 88), (60, 70)])
    with torch.no_grad():
        boxes, scores, classes = ExportableDetector(model)(images, sizes)
        ref = model([{"image": images[0]}, {"image": images[1, :, :60, :70]}])
    for i, r in enumerate(ref):
        inst = r["instances"]
        # detector_postprocess drops empty boxes (after clipping): compare the kept ones
        clipped = boxes[i].clone()
        h, w = sizes[i].tolist()
        clipped[:, 0::2] = clipped[:, 0::2].clamp(0, w)
        clipped[:, 1::2] = clipped[:, 1::2].clamp(0, h)
        keep = ((clipped[:, 2] - clipped[:, 0]) > 0) & ((clipped[:, 3] - clipped[:, 1]) > 0)
        assert keep.sum() == len(inst) > 0
        torch.testing.assert_close(clipped[keep], inst.pred_boxes.tensor, rtol=0, atol=1e-4)
        torch.testing.assert_close(scores[i][keep], inst.scores, rtol=0, atol=1e-6)
        assert torch.equal(classes[i][keep], inst.pred_classes)
