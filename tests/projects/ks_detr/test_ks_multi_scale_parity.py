"""The authors' released KS-Deformable-DETR-R50 and KS-DN-Deformable-DETR-R50 checkpoint formats load strictly
into our KS models (no missing, no unexpected keys) and reproduce the authors' eval outputs on the fixture images
(tests/fixtures/parity/README.md: boxes within 1e-4, logits within 1e-3, res5 within 1e-3); the converted
checkpoints (teacher-only weights dropped, ks_detr_method.md §9.2) load strictly into the baselines."""
import importlib.util
import os

import pytest
import torch

from detrex.config import LazyConfig, instantiate
from projects.ks_detr.modeling.checkpoint import convert_ks_to_baseline
from projects.ks_detr.modeling.ks_deformable_detr import KSDeformableDETR
from projects.ks_detr.modeling.ks_dn_deformable_detr import KSDNDeformableDETR

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
FIX = os.path.join(ROOT, "tests", "fixtures", "parity")
TEACHER_KEYS = [f"transformer.encoder.layers.5.attentions.0.{m}.{p}"
                for m in ("attention_weights_teacher", "value_proj_teacher") for p in ("weight", "bias")]

# variant -> (KS model config, baseline model config, KS class, KS keys, KS parameters, baseline keys)
VARIANTS = {
    "ks_deformable_detr_r50": (
        "projects/ks_detr/configs/ks_deformable_detr/models/ks_deformable_detr_r50_smlp_qkv_triple_attn.py",
        "projects/deformable_detr/configs/models/deformable_detr_r50.py",
        KSDeformableDETR, 567, 40_231_318, 561,
    ),
    "ks_dn_deformable_detr_r50": (
        "projects/ks_detr/configs/ks_dn_deformable_detr/models/ks_dn_deformable_detr_r50_smlp_qkv_triple_attn.py",
        "projects/dn_deformable_detr/configs/models/dn_deformable_detr_r50.py",
        KSDNDeformableDETR, 611, None, 605,
    ),
}


def read_image(path):
    """uint8 (3, H, W) RGB tensor of a PNG."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1).contiguous()


def _weights_module():
    spec = importlib.util.spec_from_file_location("parity_weights", os.path.join(FIX, "weights.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _build(cfg_path):
    torch.manual_seed(0)
    return instantiate(LazyConfig.load(os.path.join(ROOT, cfg_path)).model).eval()


@pytest.fixture(scope="module")
def batch():
    return [
        {"image": read_image(os.path.join(FIX, "inputs_a", f"{i}.png")), "height": h, "width": w}
        for i, (h, w) in enumerate([(320, 416), (288, 352)])
    ]


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request):
    """(name, released state dict, KS model with it loaded strictly)."""
    name = request.param
    ks_cfg, _, cls, n_keys, n_params, _ = VARIANTS[name]
    w = _weights_module()
    released = w.make_state_dict(w.load_keys(os.path.join(FIX, f"{name}.keys.json")))
    assert len(released) == n_keys
    model = _build(ks_cfg)
    assert type(model) is cls
    incompatible = model.load_state_dict(released, strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    if n_params is not None:
        assert sum(p.numel() for p in model.parameters()) == n_params
    return name, released, model


def test_key_inventory_matches_released_checkpoint(variant):
    _, released, model = variant
    sd = model.state_dict()
    assert list(sd) == list(released)  # same keys (aliases included), same order, ksgt last
    assert all(sd[k].shape == v.shape for k, v in released.items())
    assert list(sd)[-2:] == ["ksgt.smlp_module.token_split_conv.linear.0.weight",
                             "ksgt.smlp_module.token_split_conv.linear.0.bias"]
    assert all(k in sd for k in TEACHER_KEYS)
    assert not any("_teacher" in k for k in sd if not k.startswith("transformer.encoder.layers.5."))


def test_released_checkpoint_reproduces_authors_eval(variant, batch):
    name, _, model = variant
    expected = torch.load(os.path.join(FIX, f"{name}.a.eval.pt"), weights_only=True)
    captured = {}
    hook = model.backbone.register_forward_hook(lambda m, args, out: captured.update(out))
    try:
        with torch.no_grad():
            images = model.preprocess_image(batch)
            out = model.forward_raw(images, None)
    finally:
        hook.remove()
    results = model.postprocess(model.inference(out["pred_logits"], out["pred_boxes"], images.image_sizes), batch,
                                images.image_sizes)
    assert (captured["res5"] - expected["backbone"]["res5"]).abs().max() <= 1e-3
    assert out["pred_boxes"].shape == expected["pred_boxes"].shape == (2, 300, 4)
    assert (out["pred_boxes"] - expected["pred_boxes"]).abs().max() <= 1e-4
    assert (out["pred_logits"] - expected["pred_logits"]).abs().max() <= 1e-3
    assert len(out["aux_outputs"]) == 5  # student decoder layers only
    assert out.get("denoising_output") is None
    assert [r["instances"].image_size for r in results] == [(320, 416), (288, 352)]
    for ours, theirs in zip(results, expected["detections"]):
        scores = ours["instances"].scores
        k = min(len(scores), len(theirs["scores"]))
        assert torch.allclose(scores[:k], theirs["scores"][:k], atol=1e-4)


def test_converted_checkpoint_loads_strictly_into_baseline(variant):
    name, released, model = variant
    _, base_cfg, cls, _, _, n_base = VARIANTS[name]
    converted, changes = convert_ks_to_baseline(released)
    assert len(converted) == n_base
    assert sorted(c.split()[1] for c in changes) == sorted(
        TEACHER_KEYS + [f"ksgt.smlp_module.token_split_conv.linear.0.{p}" for p in ("weight", "bias")])
    baseline = _build(base_cfg)
    assert not isinstance(baseline, cls)
    baseline.load_state_dict(converted, strict=True)
    # teacher-only parameters (§9.2): sMLP 65,792 + attention_weights_teacher 32,896 + value_proj_teacher 65,792
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in baseline.parameters()) == 164_480
    # the student's weights are the baseline's, tensor for tensor
    base_sd, ks_sd = baseline.state_dict(), model.state_dict()
    assert all(torch.equal(base_sd[k], ks_sd[k]) for k in base_sd)
