"""The authors' released KS-Conditional-DETR-R50 and KS-DN-DETR-R50 checkpoint formats load strictly into our
KS models and reproduce the authors' eval outputs; the converted checkpoints load strictly into the baselines
(tests/fixtures/parity/README.md: boxes within 1e-4, logits within 1e-3, res5 within 1e-3). Shared body:
tests/projects/parity_helpers.py."""
import pytest
import torch

from projects.ks_detr.modeling import KSConditionalDETR, KSDNDETR, convert_ks_to_baseline
from tests.projects.parity_helpers import LAST_IN_PROJ, ParityCase, build

# variant -> (parity case, KS class, KS keys, baseline keys, compare detection labels)
VARIANTS = {
    "ks_conditional_detr_r50": (
        ParityCase("ks_conditional_detr_r50", "projects/conditional_detr/configs/models/conditional_detr_r50.py",
                   multi_scale=False, num_threads=1,
                   ks_config="projects/ks_detr/configs/ks_conditional_detr/models/"
                             "ks_conditional_detr_r50_smlp_qkv_triple_attn.py"),
        KSConditionalDETR, 566, 564, False,  # as the baseline Conditional-DETR parity test
    ),
    "ks_dn_detr_r50": (
        ParityCase("ks_dn_detr_r50", "projects/dn_detr/configs/models/dn_detr_r50.py",
                   multi_scale=False, num_threads=1,
                   ks_config="projects/ks_detr/configs/ks_dn_detr/models/ks_dn_detr_r50_smlp_qkv_triple_attn.py"),
        KSDNDETR, 605, 603, False,
    ),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request):
    """(name, released state dict, KS model with it loaded strictly, its eval ``ParityCase.run`` result)."""
    name = request.param
    case, cls, n_keys, _, _ = VARIANTS[name]
    released, model = case.released_ks_model(n_keys, cls)
    return name, released, model, case.run(model)


def test_key_inventory_matches_released_checkpoint(variant):
    name, released, model, _ = variant
    sd = model.state_dict()
    assert list(sd) == list(released)  # same keys, same order (ksgt last)
    assert all(sd[k].shape == v.shape for k, v in released.items())
    assert sd[LAST_IN_PROJ + "weight"].shape == (1536, 256)
    assert list(sd)[-2:] == ["ksgt.smlp_module.token_split_conv.linear.0.weight",
                             "ksgt.smlp_module.token_split_conv.linear.0.bias"]


def test_released_checkpoint_reproduces_authors_eval(variant):
    name, _, model, ran = variant
    case, _, _, _, compare_labels = VARIANTS[name]
    out = case.check_outputs(model, compare_labels, ran=ran)
    assert out["pred_boxes"].shape == (2, 300, 4)
    assert len(out["aux_outputs"]) == 5  # student decoder layers only
    assert out.get("denoising_output") is None  # DN: no denoising queries at eval


def test_converted_checkpoint_loads_strictly_into_baseline(variant):
    name, released, _, (_, ks_out, _) = variant
    case, _, _, n_base, _ = VARIANTS[name]
    converted, changes = convert_ks_to_baseline(released)
    assert len(converted) == n_base
    assert converted[LAST_IN_PROJ + "weight"].shape == (768, 256)
    assert converted[LAST_IN_PROJ + "bias"].shape == (768,)
    assert sum(c.startswith("dropped ksgt.") for c in changes) == 2
    assert sum(c.startswith("sliced") for c in changes) == 2
    baseline = build(case.config)
    assert not isinstance(baseline, (KSConditionalDETR, KSDNDETR))
    baseline.load_state_dict(converted, strict=True)
    _, base_out, _ = case.run(baseline)
    assert torch.allclose(ks_out["pred_logits"], base_out["pred_logits"], atol=1e-5)
    assert torch.allclose(ks_out["pred_boxes"], base_out["pred_boxes"], atol=1e-6)
