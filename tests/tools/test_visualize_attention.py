"""tools/visualize_attention.py: GT token masks and student/teacher attention of the KS layer (CPU, tiny model)."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KS_CFG = os.path.join(REPO, "tests", "tools", "configs", "tiny_ks_dab_detr_shapes.py")
BASE_CFG = os.path.join(REPO, "tests", "tools", "configs", "tiny_dab_detr_shapes.py")


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    from detrex.data.datasets.shapes import ShapesConfig, ensure_shapes

    root = str(tmp_path_factory.mktemp("cache"))
    ensure_shapes(ShapesConfig(), root=root)
    return root


def _run(args, cache_root):
    env = dict(os.environ, DETREX_CACHE=cache_root, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "tools/visualize_attention.py"] + args, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def _png(path):
    assert os.path.isfile(path), path
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.astype(np.float32).var() > 0, f"{path} is blank"
    return img


@pytest.mark.slow
def test_ks_attention_panels_and_raw_maps(cache_root, tmp_path):
    r = _run(["--config-file", KS_CFG, "--dataset", "shapes_val", "--index", "0", "--num-queries", "3",
              "--output", str(tmp_path), "--save-raw", "train.seed=1"], cache_root)
    assert r.returncode == 0, r.stderr
    raw = np.load(tmp_path / "shapes_val_00000_attention.npz")
    h, w = raw["feat_size"]
    N = h * w
    valid = raw["valid"]
    for key in ("student", "teacher1"):
        A = raw[key]
        assert A.shape == (N, N) and raw[key + "_heads"].shape[1:] == (N, N)
        assert np.allclose(raw[key + "_heads"].sum(-1), 1.0, atol=1e-5)  # every head's rows are distributions
        assert np.allclose(A.sum(-1), 1.0, atol=1e-5) and (A >= 0).all()
        assert np.all(A[:, ~valid] == 0)  # padded keys get no weight
    # teacher 1 computes its own weights from GT-enhanced tokens with its own q/k rows: different maps
    assert np.abs(raw["student"] - raw["teacher1"]).max() > 1e-3
    # masks: (h, w) binary; every authors' (point-sampled) fg token lies in a box cell, so it is also cell_overlap fg
    ma, mc = raw["mask_authors"], raw["mask_cell_overlap"]
    assert ma.shape == mc.shape == (h, w) and mc.sum() >= ma.sum() > 0 and not (ma & ~mc).any()
    q = raw["query_tokens"]
    assert 1 <= len(q) <= 3 and ma.reshape(-1)[q].all()  # queries are chosen on the foreground
    mapped_h = 128  # the shapes test mapper resizes the short side to 128
    gt_panel = _png(tmp_path / "shapes_val_00000_gt_mask.png")
    att_panel = _png(tmp_path / "shapes_val_00000_attention.png")
    assert gt_panel.shape[1] >= 3 * mapped_h and gt_panel.shape[0] >= mapped_h
    # rows: the queries + mean over all + mean over fg; columns: student, teacher 1, |difference|
    assert att_panel.shape[0] >= (len(q) + 2) * mapped_h and att_panel.shape[1] >= 3 * mapped_h


@pytest.mark.slow
def test_baseline_model_has_student_only(cache_root, tmp_path):
    r = _run(["--config-file", BASE_CFG, "--index", "1", "--output", str(tmp_path), "--save-raw"], cache_root)
    assert r.returncode == 0, r.stderr
    raw = np.load(tmp_path / "shapes_val_00001_attention.npz")
    assert "teacher1" not in raw.files
    assert np.allclose(raw["student"].sum(-1), 1.0, atol=1e-5)
    _png(tmp_path / "shapes_val_00001_attention.png")


@pytest.mark.slow
def test_bad_index_is_a_clear_error(cache_root, tmp_path):
    r = _run(["--config-file", KS_CFG, "--index", "100000", "--output", str(tmp_path)], cache_root)
    assert r.returncode == 2 and "out of range" in r.stderr and "Traceback" not in r.stderr


def _load_tool():
    spec = importlib.util.spec_from_file_location("visualize_attention", os.path.join(REPO, "tools", "visualize_attention.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_recomputed_weights_match_torch_multihead_attention():
    """The tool recomputes A from the packed in_proj; on the baseline layer (an nn.MultiheadAttention) it must
    equal the weights torch itself returns for the same inputs."""
    torch.manual_seed(0)
    tool = _load_tool()
    C, heads, N, B = 16, 4, 6, 1
    mha = torch.nn.MultiheadAttention(C, heads)
    x = torch.randn(N, B, C)
    kpm = torch.zeros(B, N, dtype=torch.bool)
    kpm[0, -2:] = True
    _, ref = mha(x, x, x, key_padding_mask=kpm, need_weights=True, average_attn_weights=False)
    W, b = mha.in_proj_weight, mha.in_proj_bias
    q = torch.nn.functional.linear(x, W[:C], b[:C])
    k = torch.nn.functional.linear(x, W[C:2 * C], b[C:2 * C])
    ours = tool._weights(q, k, heads, kpm)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_choose_queries_prefers_box_centres():
    tool = _load_tool()
    fg = np.zeros((4, 4), bool)
    fg[1:3, 1:3] = True
    valid = np.ones(16, bool)
    q = tool.choose_queries(fg, valid, np.array([[32.0, 32.0, 96.0, 96.0]]), (128, 128), k=3)
    assert q[0] == 2 * 4 + 2  # the token under the box centre (64, 64)
    assert len(q) == 3 and all(fg.reshape(-1)[i] for i in q) and len(set(q)) == 3
