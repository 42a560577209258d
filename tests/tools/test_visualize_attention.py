"""tools/visualize_attention.py and projects/ks_detr/visualization: GT token masks and student/teacher attention
of the KS layer (CPU, tiny model)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from projects.ks_detr.visualization import deformable, single_scale
from projects.ks_detr.visualization.common import choose_queries

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


def test_recomputed_weights_match_torch_multihead_attention():
    """The tool (``single_scale.attention_weights``) recomputes A from the packed in_proj; on the baseline layer
    (an nn.MultiheadAttention) it must equal the weights torch itself returns for the same inputs."""
    torch.manual_seed(0)
    C, heads, N, B = 16, 4, 6, 1
    mha = torch.nn.MultiheadAttention(C, heads)
    x = torch.randn(N, B, C)
    kpm = torch.zeros(B, N, dtype=torch.bool)
    kpm[0, -2:] = True
    _, ref = mha(x, x, x, key_padding_mask=kpm, need_weights=True, average_attn_weights=False)
    W, b = mha.in_proj_weight, mha.in_proj_bias
    q = torch.nn.functional.linear(x, W[:C], b[:C])
    k = torch.nn.functional.linear(x, W[C:2 * C], b[C:2 * C])
    ours = single_scale.attention_weights(q, k, heads, kpm)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_choose_queries_prefers_box_centres():
    fg = np.zeros((4, 4), bool)
    fg[1:3, 1:3] = True
    valid = np.ones(16, bool)
    q = choose_queries(fg, valid, np.array([[32.0, 32.0, 96.0, 96.0]]), (128, 128), k=3)
    assert q[0] == 2 * 4 + 2  # the token under the box centre (64, 64)
    assert len(q) == 3 and all(fg.reshape(-1)[i] for i in q) and len(set(q)) == 3


# ------------------------------------------------------------------------------ deformable models
KS_DEF_CFG = os.path.join(REPO, "projects", "ks_detr", "configs", "ks_deformable_detr",
                          "ks_deformable_detr_shapes_demo.py")
DEF_CFG = os.path.join(REPO, "projects", "deformable_detr", "configs", "deformable_detr_shapes_demo.py")


@pytest.mark.slow
def test_ks_deformable_sampling_panels_and_raw(cache_root, tmp_path):
    """The documented command on the KS-Deformable-DETR shapes demo (random init, seeded)."""
    r = _run(["--config-file", KS_DEF_CFG, "--index", "0", "--num-queries", "3", "--output", str(tmp_path),
              "--save-raw", "train.seed=0"], cache_root)
    assert r.returncode == 0, r.stderr
    raw = np.load(tmp_path / "shapes_val_00000_sampling.npz")
    shapes = raw["spatial_shapes"]
    L = len(shapes)
    N = int((shapes[:, 0] * shapes[:, 1]).sum())
    q = raw["query_tokens"]
    assert 1 <= len(q) <= 3 and L == 2
    for branch in ("student", "teacher1", "teacher2"):
        w, loc = raw[f"{branch}_weights"], raw[f"{branch}_locations"]
        Q, M, L_, P = w.shape
        assert (Q, L_) == (len(q), L) and loc.shape == (Q, M, L, P, 2)
        assert (w >= 0).all() and np.allclose(w.sum((-1, -2)), 1.0, atol=1e-5)  # per query and head
        assert np.isfinite(loc).all()
    # random init: the student's weights are uniform (zero-init attention_weights), teacher 1's are not
    assert np.allclose(raw["student_weights"], 1.0 / (L * P), atol=1e-6)
    assert np.abs(raw["teacher1_weights"] - raw["student_weights"]).max() > 1e-3
    # the mask the model's sMLP received (hooked) is the authors'-rule multi-level mask; queries are on it
    assert raw["mask_model"].shape == (N,) and (raw["mask_model"] == raw["mask_authors"]).all()
    assert raw["mask_authors"][q].all() and (q < shapes[0, 0] * shapes[0, 1]).all()  # finest level (level 0)
    mapped_h, mapped_w = raw["image_size"]
    gt_panel = _png(tmp_path / "shapes_val_00000_gt_mask.png")
    samp_panel = _png(tmp_path / "shapes_val_00000_sampling.png")
    # GT panel: 2 rows x (image + one mask per level); sampling panel: a row per query, student/teacher 1/diff
    assert gt_panel.shape[0] >= 2 * mapped_h and gt_panel.shape[1] >= (L + 1) * mapped_w
    assert samp_panel.shape[0] >= len(q) * mapped_h and samp_panel.shape[1] >= 3 * mapped_w


@pytest.mark.slow
def test_baseline_deformable_has_student_only(cache_root, tmp_path):
    r = _run(["--config-file", DEF_CFG, "--index", "1", "--num-queries", "2", "--output", str(tmp_path),
              "--save-raw"], cache_root)
    assert r.returncode == 0, r.stderr
    raw = np.load(tmp_path / "shapes_val_00001_sampling.npz")
    assert not any(k.startswith("teacher") for k in raw.files) and "mask_model" not in raw.files
    assert np.allclose(raw["student_weights"].sum((-1, -2)), 1.0, atol=1e-5)
    _png(tmp_path / "shapes_val_00001_gt_mask.png")
    panel = _png(tmp_path / "shapes_val_00001_sampling.png")
    assert panel.shape[0] >= len(raw["query_tokens"]) * raw["image_size"][0]  # a row per query


def _deformable_model(cfg_path, seed=0):
    from demo.predictor import build_model, load_config

    torch.manual_seed(seed)
    return build_model(load_config(cfg_path))


def _synthetic_input(h=128, w=144):
    """One mapped image with two boxes (absolute xyxy): a (3, h, w) uint8 image and its ``instances``."""
    from detrex.structures import Boxes, Instances

    g = torch.Generator().manual_seed(0)
    img = torch.randint(60, 90, (3, h, w), dtype=torch.uint8, generator=g)
    boxes = torch.tensor([[8.0, 10.0, 60.0, 70.0], [80.0, 40.0, 136.0, 120.0]])
    for (x1, y1, x2, y2), col in zip(boxes.long().tolist(), ((220, 40, 40), (40, 200, 60))):
        img[:, y1:y2, x1:x2] = torch.tensor(col, dtype=torch.uint8)[:, None, None]
    inst = Instances((h, w), gt_boxes=Boxes(boxes), gt_classes=torch.tensor([0, 2]))
    return {"image": img, "instances": inst, "height": h, "width": w}


def _record_core_calls(monkeypatch):
    """Record (locations, weights, value) of every call the model makes to the deformable-attention core."""
    from detrex.layers import multi_scale_deform_attn as msda

    calls, orig = [], msda.ms_deform_attn

    def recorder(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, *a, **k):
        calls.append((sampling_locations.detach().clone(), attention_weights.detach().clone(), value.detach().clone()))
        return orig(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, *a, **k)

    monkeypatch.setattr(msda, "ms_deform_attn", recorder)
    return calls


def test_ks_deformable_capture_matches_the_core_calls_of_a_trained_stand_in(monkeypatch):
    """"Trained" stand-in: Gaussian noise on the last encoder layer's student ``sampling_offsets`` and
    ``attention_weights`` matrices (zero at init), so the student's locations and weights depend on the query,
    as after training; ``attention_weights_teacher`` keeps its (xavier) init, different from the student's.

    What the tool reports must be exactly what the model fed to the deformable-attention core in its three
    last-layer calls (student, teacher 1, teacher 2), and those calls must share what KS-DETR §4.4 says they
    share: the same locations in all three; teacher 1 = student's values with its own weights; teacher 2 =
    student's weights with its own values.
    """
    torch.set_num_threads(1)
    model = _deformable_model(KS_DEF_CFG)
    attn = model.transformer.encoder.layers[-1].attentions[0]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for lin in (attn.sampling_offsets, attn.attention_weights):
            lin.weight.copy_(0.1 * torch.randn(lin.weight.shape, generator=g))
    calls = _record_core_calls(monkeypatch)
    rec = deformable.capture_sampling(model, [_synthetic_input()])

    sizes = rec["spatial_shapes"]
    N = sum(h * w for h, w in sizes)
    assert sizes == [(8, 9), (4, 5)] and rec["locations"].shape[0] == N
    enc = [c for c in calls if c[0].shape[1] == N]  # encoder calls (the decoder's have 10 queries)
    assert len(enc) == 1 + 3  # layer 0 (baseline layer) + the KS layer's student, teacher 1, teacher 2
    (loc_s, w_s, v_s), (loc_1, w_1, v_1), (loc_2, w_2, v_2) = enc[-3:]
    # the method's sharing, as the model itself runs it
    assert torch.equal(loc_s, loc_1) and torch.equal(loc_s, loc_2)
    assert torch.equal(v_1, v_s) and not torch.allclose(v_2, v_s)
    assert torch.equal(w_2, w_s) and (w_1 - w_s).abs().max() > 1e-3
    # the tool's recomputation equals those inputs
    assert torch.allclose(rec["locations"], loc_s[0], atol=1e-6)
    for key, ref in (("student", w_s), ("teacher1", w_1), ("teacher2", w_2)):
        assert torch.allclose(rec["weights"][key], ref[0], atol=1e-6), key
        assert torch.allclose(rec["branch_locations"][key], loc_s[0], atol=1e-6), key
    assert torch.allclose(rec["weights"]["teacher1"].sum((-1, -2)), torch.ones(N, attn.num_heads), atol=1e-5)
    # the perturbed student is no longer uniform, and its locations move with the query
    assert rec["weights"]["student"].std() > 1e-3
    # the GT token mask the sMLP saw: the two boxes cover foreground tokens on level 0
    assert rec["model_mask"] is not None and rec["model_mask"][: 8 * 9].sum() > 0


def test_random_init_locations_are_the_polar_grid_around_each_token(monkeypatch):
    """Baseline Deformable-DETR at init (sampling_offsets weight 0): every token samples head m's point p at
    its own centre plus (p + 1) pixels of each level along the direction 2*pi*m/M (largest component 1),
    with uniform weights 1/(L*P) (Zhu et al. 2021's init). Expected values computed here from that rule."""
    torch.set_num_threads(1)
    model = _deformable_model(DEF_CFG)
    rec = deformable.capture_sampling(model, [_synthetic_input()])
    assert not rec["is_ks"] and set(rec["weights"]) == {"student"} and rec["model_mask"] is None
    attn = model.transformer.encoder.layers[-1].attentions[0]
    M, L, P = attn.num_heads, attn.num_levels, attn.num_points
    loc = rec["locations"].numpy()
    (h0, w0) = rec["spatial_shapes"][0]
    for token in (0, 13, h0 * w0 - 1):  # tokens of level 0
        r, c = divmod(token, w0)
        centre = np.array([(c + 0.5) / w0, (r + 0.5) / h0])
        assert ((centre >= 0) & (centre <= 1)).all()
        for m in range(M):
            a = 2 * np.pi * m / M
            d = np.array([np.cos(a), np.sin(a)])
            d /= np.abs(d).max()
            for lvl, (hl, wl) in enumerate(rec["spatial_shapes"]):
                for p in range(P):
                    expected = centre + d * (p + 1) / np.array([wl, hl])
                    assert np.allclose(loc[token, m, lvl, p], expected, atol=1e-5), (token, m, lvl, p)
    assert torch.allclose(rec["weights"]["student"], torch.full_like(rec["weights"]["student"], 1.0 / (L * P)))


def test_choose_level_queries_uses_the_finest_level():
    rec = {"spatial_shapes": [(4, 4), (2, 2)], "level_start": [0, 16], "padded_size": (128, 128)}
    fg = np.zeros(20, bool)
    fg[[5, 6, 9, 10]] = True  # level 0: the 2x2 centre block
    fg[16:] = True  # level 1: all foreground, never chosen
    q = deformable.choose_level_queries(fg, np.ones(20, bool), np.array([[32.0, 32.0, 96.0, 96.0]]), rec, k=3)
    assert q[0] == 10 and len(q) == 3 and all(i in (5, 6, 9, 10) for i in q)


def test_draw_weighted_points_area_grows_with_weight():
    from detrex.utils.visualizer import Visualizer

    img = np.zeros((60, 120, 3), np.uint8)
    vis = Visualizer(img, scale=1.0)
    vis.draw_weighted_points([[20, 30], [60, 30], [100, 30]], [1.0, 0.25, 0.0], (255, 255, 255), max_radius=10)
    out = vis.get_output().get_image().astype(int).sum(-1)
    painted = [(out[:, x0:x0 + 40] > 0).sum() for x0 in (0, 40, 80)]
    assert painted[0] > painted[1] > 0 and painted[2] == 0  # zero weight draws nothing
    # area ~ weight: radius 10 vs 5 -> about 4x the pixels
    assert 2.5 < painted[0] / painted[1] < 6
    with pytest.raises(ValueError, match="2 points but 1 weights"):
        vis.draw_weighted_points([[0, 0], [1, 1]], [1.0], (255, 0, 0))


def test_model_without_the_expected_encoder_is_a_clear_error():
    """Neither a DETR encoder nor a deformable one: the single-scale lookup names the module paths it expected
    (the tool prints UnsupportedModelError as one ``error:`` line), the deformable lookup says "not mine"."""
    from projects.ks_detr.visualization.common import UnsupportedModelError

    model = torch.nn.Linear(2, 2)
    assert deformable.find_deformable_attention(model) is None
    with pytest.raises(UnsupportedModelError, match=r"transformer\.encoder\.layers\[-1\]\.attentions\[0\]\.attn"):
        single_scale.find_last_encoder_attention(model)
