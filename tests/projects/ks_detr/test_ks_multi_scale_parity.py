"""The authors' released KS-Deformable-DETR-R50 and KS-DN-Deformable-DETR-R50 checkpoint formats load strictly
into our KS models (no missing, no unexpected keys) and reproduce the authors' eval outputs on the fixture images
(tests/fixtures/parity/README.md: boxes within 1e-4, logits within 1e-3, res5 within 1e-3); the converted
checkpoints (teacher-only weights dropped, ks_detr_method.md §9.2) load strictly into the baselines. Shared body:
tests/projects/parity_helpers.py."""
import pytest
import torch

from projects.ks_detr.modeling.checkpoint import convert_ks_to_baseline
from projects.ks_detr.modeling.ks_deformable_detr import KSDeformableDETR
from projects.ks_detr.modeling.ks_dn_deformable_detr import KSDNDeformableDETR
from tests.projects.parity_helpers import ParityCase, build

TEACHER_KEYS = [f"transformer.encoder.layers.5.attentions.0.{m}.{p}"
                for m in ("attention_weights_teacher", "value_proj_teacher") for p in ("weight", "bias")]
KS_CONFIGS = "projects/ks_detr/configs/{0}/models/{0}_r50_smlp_qkv_triple_attn.py"

# variant -> (parity case, KS class, KS keys, KS parameters, baseline keys)
VARIANTS = {
    "ks_deformable_detr_r50": (
        ParityCase("ks_deformable_detr_r50", "projects/deformable_detr/configs/models/deformable_detr_r50.py",
                   multi_scale=True, num_threads=2, ks_config=KS_CONFIGS.format("ks_deformable_detr")),
        KSDeformableDETR, 567, 40_231_318, 561,
    ),
    "ks_dn_deformable_detr_r50": (
        ParityCase("ks_dn_deformable_detr_r50",
                   "projects/dn_deformable_detr/configs/models/dn_deformable_detr_r50.py",
                   multi_scale=True, num_threads=2, ks_config=KS_CONFIGS.format("ks_dn_deformable_detr")),
        KSDNDeformableDETR, 611, None, 605,
    ),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request):
    """(name, released state dict, KS model with it loaded strictly)."""
    name = request.param
    case, cls, n_keys, n_params, _ = VARIANTS[name]
    released, model = case.released_ks_model(n_keys, cls)
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


def test_released_checkpoint_reproduces_authors_eval(variant):
    name, _, model = variant
    out = VARIANTS[name][0].check_outputs(model, compare_labels=True)  # as the baseline parity tests
    assert out["pred_boxes"].shape == (2, 300, 4)
    assert len(out["aux_outputs"]) == 5  # student decoder layers only
    assert out.get("denoising_output") is None


def test_converted_checkpoint_loads_strictly_into_baseline(variant):
    name, released, model = variant
    case, cls, _, _, n_base = VARIANTS[name]
    converted, changes = convert_ks_to_baseline(released)
    assert len(converted) == n_base
    assert sorted(c.split()[1] for c in changes) == sorted(
        TEACHER_KEYS + [f"ksgt.smlp_module.token_split_conv.linear.0.{p}" for p in ("weight", "bias")])
    baseline = build(case.config)
    assert not isinstance(baseline, cls)
    baseline.load_state_dict(converted, strict=True)
    # teacher-only parameters (§9.2): sMLP 65,792 + attention_weights_teacher 32,896 + value_proj_teacher 65,792
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in baseline.parameters()) == 164_480
    # the student's weights are the baseline's, tensor for tensor
    base_sd, ks_sd = baseline.state_dict(), model.state_dict()
    assert all(torch.equal(base_sd[k], ks_sd[k]) for k in base_sd)
