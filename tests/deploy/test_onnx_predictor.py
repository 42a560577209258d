"""`OnnxPredictor` (numpy + onnxruntime + Pillow) gives the PyTorch predictor's detections on a shapes image; it
resizes exactly as the test mapper; `detrex.deploy` imports neither torch nor (until used) onnx/onnxruntime."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from demo.predictor import DefaultPredictor  # noqa: E402
from detrex.data.datasets.shapes import ShapesConfig, _render_image  # noqa: E402
from detrex.data.transforms import ResizeShortestEdge  # noqa: E402
from detrex.deploy import OnnxPredictor  # noqa: E402
from detrex.deploy.export import export_onnx  # noqa: E402
from detrex.deploy.onnx_predictor import resized_shape  # noqa: E402
from tests.deploy.tiny import randomize_heads, tiny_config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def shapes_image(index=7):
    """A shapes-dataset image (H, W, 3) uint8 RGB (default generation parameters, fixed seed)."""
    image, objects = _render_image(ShapesConfig(), np.random.default_rng([0, 1, index]))
    assert objects
    return image


def _torch_predictor(name):
    cfg = tiny_config(name)
    torch.manual_seed(0)
    predictor = DefaultPredictor(cfg, device="cpu")
    randomize_heads(predictor.model)
    return cfg, predictor


@pytest.mark.parametrize("name", ["dab", "ks_deformable"])
def test_onnx_predictor_equals_pytorch_predictor(name, tmp_path):
    cfg, pt = _torch_predictor(name)
    path = str(tmp_path / "m.onnx")
    export_onnx(pt.model, path, 128, 160, dynamic=True, cfg=cfg)
    image = shapes_image()
    ref = pt(image)["instances"]
    out = OnnxPredictor(path)(image)
    assert set(out) == {"boxes", "scores", "classes"}
    assert len(out["scores"]) == len(ref) > 0
    assert out["boxes"].dtype == np.float32 and out["classes"].dtype == np.int64
    np.testing.assert_allclose(out["boxes"], ref.pred_boxes.tensor.numpy(), rtol=0, atol=1e-3)
    np.testing.assert_allclose(out["scores"], ref.scores.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(out["classes"], ref.pred_classes.numpy())
    h, w = image.shape[:2]
    assert (out["boxes"][:, 2] <= w).all() and (out["boxes"][:, 3] <= h).all() and (out["boxes"] >= 0).all()
    # BGR arrays are flipped to the model's RGB
    bgr = OnnxPredictor(path, input_format="BGR")(np.ascontiguousarray(image[:, :, ::-1]))
    np.testing.assert_array_equal(bgr["boxes"], out["boxes"])


def test_fixed_size_model_pads_like_a_batch(tmp_path):
    """A fixed 160x192 export: the resized image is padded to it, as the eval model pads a batch (and the padding is
    masked); an image that does not fit is refused with a clear message."""
    cfg, pt = _torch_predictor("dab")
    path = str(tmp_path / "fixed.onnx")
    export_onnx(pt.model, path, 160, 192, dynamic=False, cfg=cfg)
    predictor = OnnxPredictor(path)
    assert predictor.fixed_size == (160, 192) and predictor.fixed_batch == 1
    image = shapes_image()
    resized = predictor.preprocess(image)
    assert resized.shape[0] < 160 or resized.shape[1] < 192  # really padded
    h, w = image.shape[:2]
    item = {"image": torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))), "height": h, "width": w}
    filler = {"image": torch.zeros(3, 160, 192, dtype=torch.uint8)}  # pads the batch to 160x192
    with torch.no_grad():
        ref = pt.model([item, filler])[0]["instances"]
    out = predictor(image)
    assert len(out["scores"]) == len(ref) > 0
    np.testing.assert_allclose(out["boxes"], ref.pred_boxes.tensor.numpy(), rtol=0, atol=1e-3)
    np.testing.assert_allclose(out["scores"], ref.scores.numpy(), rtol=0, atol=1e-5)
    big = np.zeros((100, 400, 3), np.uint8)  # resized to 128 x 192 ... fits; a tall one does not
    predictor(big)
    with pytest.raises(ValueError, match="exported for 160x192"):
        predictor(np.zeros((400, 100, 3), np.uint8))


def test_resize_matches_the_test_mapper():
    for h, w in [(480, 640), (640, 480), (333, 1000), (1000, 333), (127, 129), (128, 128), (50, 3000)]:
        for short, max_size in [(800, 1333), (128, 192), (512, 0)]:
            expected = ResizeShortestEdge.get_output_shape(h, w, short, max_size or sys.maxsize)
            assert resized_shape(h, w, short, max_size) == expected, (h, w, short, max_size)


def _run_python(code, tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=120)


def test_deploy_predictor_runs_without_importing_torch(tmp_path):
    cfg, pt = _torch_predictor("dab")
    path = str(tmp_path / "m.onnx")
    export_onnx(pt.model, path, 128, 160, dynamic=True, cfg=cfg)
    np.save(tmp_path / "img.npy", shapes_image())
    r = _run_python(f"""
        import sys
        import numpy as np
        import detrex.deploy
        from detrex.deploy import OnnxPredictor
        assert "torch" not in sys.modules, "import detrex.deploy imported torch"
        out = OnnxPredictor({path!r})(np.load("img.npy"))
        assert "torch" not in sys.modules, "OnnxPredictor imported torch"
        print(len(out["scores"]), out["boxes"].shape)
    """, tmp_path)
    assert r.returncode == 0, r.stderr
    n = len(pt(shapes_image())["instances"])
    assert r.stdout.split()[0] == str(n)


def test_deploy_imports_without_onnx_or_onnxruntime(tmp_path):
    r = _run_python("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("onnx", "onnxruntime", "torch"):
                    raise ImportError(f"blocked {name}")
        sys.meta_path.insert(0, Block())
        import detrex, detrex.deploy
        from detrex.deploy import OnnxPredictor
        try:
            OnnxPredictor("missing.onnx")
        except ImportError as e:
            print("ImportError", e)
    """, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "ImportError blocked onnxruntime" in r.stdout
