"""The authors' released KS-Conditional-DETR-R50 and KS-DN-DETR-R50 checkpoint formats load strictly into our
KS models and reproduce the authors' eval outputs; the converted checkpoints load strictly into the baselines
(tests/fixtures/parity/README.md: boxes within 1e-4, logits within 1e-3, res5 within 1e-3)."""
import importlib.util
import os

import pytest
import torch

from detrex.config import LazyConfig, instantiate
from projects.ks_detr.modeling import KSConditionalDETR, KSDNDETR, convert_ks_to_baseline

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
FIX = os.path.join(ROOT, "tests", "fixtures", "parity")
LAST_IN_PROJ = "transformer.encoder.layers.5.attentions.0.attn.in_proj_"

# variant -> (KS model config, baseline model config, KS class, KS keys, baseline keys)
VARIANTS = {
    "ks_conditional_detr_r50": (
        "projects/ks_detr/configs/ks_conditional_detr/models/ks_conditional_detr_r50_smlp_qkv_triple_attn.py",
        "projects/conditional_detr/configs/models/conditional_detr_r50.py",
        KSConditionalDETR, 566, 564,
    ),
    "ks_dn_detr_r50": (
        "projects/ks_detr/configs/ks_dn_detr/models/ks_dn_detr_r50_smlp_qkv_triple_attn.py",
        "projects/dn_detr/configs/models/dn_detr_r50.py",
        KSDNDETR, 605, 603,
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


def _raw(model, batch):
    with torch.no_grad():
        images = model.preprocess_image(batch)
        res5 = model.backbone(images.tensor)["res5"]
        return model.forward_raw(images, None), res5


@pytest.fixture(scope="module")
def batch():
    return [
        {"image": read_image(os.path.join(FIX, "inputs_a", f"{i}.png")), "height": h, "width": w}
        for i, (h, w) in enumerate([(320, 416), (288, 352)])
    ]


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request, batch):
    """(name, released state dict, KS model with it loaded strictly, its eval (raw outputs, res5) on batch)."""
    name = request.param
    ks_cfg, _, cls, n_keys, _ = VARIANTS[name]
    w = _weights_module()
    released = w.make_state_dict(w.load_keys(os.path.join(FIX, f"{name}.keys.json")))
    assert len(released) == n_keys
    model = _build(ks_cfg)
    assert type(model) is cls
    incompatible = model.load_state_dict(released, strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    return name, released, model, _raw(model, batch)


def test_key_inventory_matches_released_checkpoint(variant):
    name, released, model, _ = variant
    sd = model.state_dict()
    assert list(sd) == list(released)  # same keys, same order (ksgt last)
    assert all(sd[k].shape == v.shape for k, v in released.items())
    assert sd[LAST_IN_PROJ + "weight"].shape == (1536, 256)
    assert list(sd)[-2:] == ["ksgt.smlp_module.token_split_conv.linear.0.weight",
                             "ksgt.smlp_module.token_split_conv.linear.0.bias"]


def test_released_checkpoint_reproduces_authors_eval(variant):
    name, _, _, (out, res5) = variant
    expected = torch.load(os.path.join(FIX, f"{name}.a.eval.pt"), weights_only=True)
    assert (res5 - expected["backbone"]["res5"]).abs().max() <= 1e-3
    assert out["pred_boxes"].shape == expected["pred_boxes"].shape == (2, 300, 4)
    assert (out["pred_boxes"] - expected["pred_boxes"]).abs().max() <= 1e-4
    assert (out["pred_logits"] - expected["pred_logits"]).abs().max() <= 1e-3
    assert len(out["aux_outputs"]) == 5  # student decoder layers only
    assert out.get("denoising_output") is None  # DN: no denoising queries at eval


def test_converted_checkpoint_loads_strictly_into_baseline(variant, batch):
    name, released, _, (ks_out, _) = variant
    _, base_cfg, _, _, n_base = VARIANTS[name]
    converted, changes = convert_ks_to_baseline(released)
    assert len(converted) == n_base
    assert converted[LAST_IN_PROJ + "weight"].shape == (768, 256)
    assert converted[LAST_IN_PROJ + "bias"].shape == (768,)
    assert sum(c.startswith("dropped ksgt.") for c in changes) == 2
    assert sum(c.startswith("sliced") for c in changes) == 2
    baseline = _build(base_cfg)
    assert not isinstance(baseline, (KSConditionalDETR, KSDNDETR))
    baseline.load_state_dict(converted, strict=True)
    base_out, _ = _raw(baseline, batch)
    assert torch.allclose(ks_out["pred_logits"], base_out["pred_logits"], atol=1e-5)
    assert torch.allclose(ks_out["pred_boxes"], base_out["pred_boxes"], atol=1e-6)
