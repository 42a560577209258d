"""The authors' released KS-DAB-DETR checkpoint format loads strictly and reproduces their eval outputs
(tests/fixtures/parity/README.md: boxes within 1e-4, logits within 1e-3, res5 within 1e-3). Shared body:
tests/projects/parity_helpers.py."""
import pytest
import torch

from projects.ks_detr.modeling import KSDABDETR, convert_ks_to_baseline
from tests.projects.parity_helpers import REPO, ParityCase, build, load_inputs

KS_MODEL_CFG = "projects/ks_detr/configs/ks_dab_detr/models/ks_dab_detr_r50_smlp_qkv_triple_attn.py"
DAB_MODEL_CFG = "projects/dab_detr/configs/models/dab_detr_r50.py"
CASE = ParityCase("ks_dab_detr_r50", DAB_MODEL_CFG, multi_scale=False, num_threads=1, ks_config=KS_MODEL_CFG)


@pytest.fixture(scope="module")
def released_state_dict():
    return CASE.released_state_dict()


@pytest.fixture(scope="module")
def batch():
    return load_inputs()


@pytest.fixture(scope="module")
def ks_model(released_state_dict):
    return CASE.build_ks_model(released_state_dict)


def test_key_inventory_matches_released_checkpoint(released_state_dict):
    model = build(KS_MODEL_CFG)
    assert isinstance(model, KSDABDETR)
    sd = model.state_dict()
    assert list(sd) == list(released_state_dict)  # same 604 keys (aliases included), same order
    assert all(sd[k].shape == v.shape for k, v in released_state_dict.items())
    assert len(sd) == 604


def test_released_checkpoint_reproduces_authors_eval(ks_model, batch):
    out = CASE.check_outputs(ks_model, compare_labels=True)  # the baseline DAB-DETR parity checks
    assert out["pred_boxes"].shape == (2, 300, 4)
    # the full eval path needs no instances and returns detections at the requested size
    with torch.no_grad():
        results = ks_model(batch)
    assert len(results) == 2 and results[1]["instances"].image_size == (288, 352)


def test_converted_checkpoint_loads_strictly_into_dab_detr(ks_model, released_state_dict):
    converted, changes = convert_ks_to_baseline(released_state_dict)
    assert len(converted) == 602
    assert converted["transformer.encoder.layers.5.attentions.0.attn.in_proj_weight"].shape == (768, 256)
    assert sum(c.startswith("dropped ksgt.") for c in changes) == 2 and sum(c.startswith("sliced") for c in changes) == 2
    baseline = build(DAB_MODEL_CFG)
    baseline.load_state_dict(converted, strict=True)
    _, ks_out, _ = CASE.run(ks_model)
    _, base_out, _ = CASE.run(baseline)
    assert torch.allclose(ks_out["pred_logits"], base_out["pred_logits"], atol=1e-5)
    assert torch.allclose(ks_out["pred_boxes"], base_out["pred_boxes"], atol=1e-6)


def test_detection_checkpointer_loads_released_file_without_missing_or_unexpected(released_state_dict, tmp_path):
    from detrex.checkpoint import DetectionCheckpointer

    path = tmp_path / "ks_dab_detr_r50.pth"
    torch.save({"model": released_state_dict}, path)
    model = build(KS_MODEL_CFG)
    ckpt = DetectionCheckpointer(model)
    incompatible = ckpt._load_model({"model": dict(released_state_dict)})
    assert not incompatible.missing_keys and not incompatible.unexpected_keys and not incompatible.incorrect_shapes
    model = build(KS_MODEL_CFG)
    DetectionCheckpointer(model).load(str(path))
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in released_state_dict.items())


def test_convert_tool_writes_baseline_checkpoint(released_state_dict, tmp_path, capsys):
    import sys

    sys.path.insert(0, str(REPO / "tools"))
    try:
        import convert_ks_to_baseline as tool
    finally:
        sys.path.pop(0)
    src, dst = tmp_path / "ks.pth", tmp_path / "out" / "base.pth"
    torch.save({"model": released_state_dict}, src)
    tool.main([str(src), str(dst)])
    printed = capsys.readouterr().out
    assert "dropped ksgt.smlp_module.token_split_conv.linear.0.weight" in printed
    assert "sliced transformer.encoder.layers.5.attentions.0.attn.in_proj_bias (1536,) -> [:768]" in printed
    converted = torch.load(dst, weights_only=True)["model"]
    assert len(converted) == 602 and not any(k.startswith("ksgt.") for k in converted)
    baseline = build(DAB_MODEL_CFG)
    baseline.load_state_dict(converted, strict=True)
    w = released_state_dict["transformer.encoder.layers.5.attentions.0.attn.in_proj_weight"]
    assert torch.equal(baseline.transformer.encoder.layers[5].attentions[0].attn.in_proj_weight, w[:768])
