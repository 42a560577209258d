"""KS-DN-DETR end to end: the R50 model from its config (training step with 48 loss keys, GT-free eval,
teacher-only weights do not reach eval) and a tiny model from the same config for the output layout and the
teachers' denoising inputs (ks_detr_method.md §4.2, §5, §11.4-6)."""
import os

import pytest
import torch

from detrex.config import LazyConfig, instantiate
from detrex.modeling.criterion.dn_criterion import DNCriterion
from projects.dn_detr.modeling import DNDETR
from projects.ks_detr.modeling import KSDNDETR, KSTripleAttnEncoderLayer
from tests.projects.ks_detr import single_scale_helpers
from tests.projects.ks_detr.single_scale_helpers import C, NUM_CLASSES, batch, check_ks_training_step
from tests.projects.ks_detr.single_scale_helpers import check_top_level_configs, eval_ignoring_teacher_weights
from tests.projects.ks_detr.single_scale_helpers import tiny_ks_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CFG_DIR = os.path.join(ROOT, "projects/ks_detr/configs/ks_dn_detr")
KS_MODEL_CFG = os.path.join(CFG_DIR, "models/ks_dn_detr_r50_smlp_qkv_triple_attn.py")


def raw(model, items, train, seed=0):
    return single_scale_helpers.raw(model, items, train, seed=seed)  # seeds the denoising noise


def expected_keys(n_aux=7):
    return single_scale_helpers.expected_keys(n_aux, denoising=True)


@pytest.fixture(scope="module")
def r50():
    torch.manual_seed(0)
    model = instantiate(LazyConfig.load(KS_MODEL_CFG).model)
    assert type(model) is KSDNDETR and isinstance(model, DNDETR) and isinstance(model.criterion, DNCriterion)
    return model


def test_r50_config_training_step(r50):
    wd = r50.criterion.weight_dict
    assert len(wd) == 48 and wd["loss_class_dn_6"] == 1.0 and wd["loss_bbox_dn_6"] == 5.0 and wd["loss_giou_6"] == 2.0
    assert r50.position_embedding.temperature == 20 and r50.freeze_anchor_box_centers is False
    assert isinstance(r50.transformer.encoder.layers[5], KSTripleAttnEncoderLayer)
    assert r50.transformer.encoder.layers[5].attentions[0].attn.in_proj_weight.shape == (6 * C, C)
    losses = check_ks_training_step(r50, expected_keys())
    assert len(losses) == 48
    assert r50.denoising_generator.label_encoder.weight.grad.abs().sum() > 0
    r50.zero_grad()


def test_r50_config_eval_without_instances_ignores_teacher_weights(r50):
    before, raw_before = eval_ignoring_teacher_weights(r50, batch(with_instances=False), raw_fn=raw)
    assert len(before) == 2 and before[1]["instances"].image_size == (80, 64) and len(before[0]["instances"]) == 300
    assert raw_before["denoising_output"] is None and len(raw_before["aux_outputs"]) == 5
    assert raw_before["pred_logits"].shape == (2, 300, 80)


def tiny_model(groups=3):
    return tiny_ks_model(KS_MODEL_CFG, {"denoising_groups": groups})  # dropout is 0.0 in DN-DETR


def test_prediction_layout_with_denoising_parts():
    model = tiny_model(groups=3)
    items = batch()
    with torch.no_grad():
        student = raw(model, items, train=False)
        out = raw(model, items, train=True)
        # 8 sets, each split into a matching part (8 queries) and a denoising part (3 groups x 2 GT)
        assert len(out["aux_outputs"]) == 7 and out["pred_logits"].shape == (2, 8, NUM_CLASSES)
        dn = out["denoising_output"]
        assert len(dn["aux_outputs"]) == 7 and dn["pred_boxes"].shape == (2, 6, 4)
        # aux 0..5 are the student's layers; the mask hides DN queries from the matching ones (= eval)
        for i in range(6):
            ref = student["aux_outputs"][i] if i < 5 else student
            assert torch.allclose(out["aux_outputs"][i]["pred_logits"], ref["pred_logits"], atol=1e-5)
        attn = model.transformer.encoder.layers[5].attentions[0].attn
        attn.in_proj_weight[3 * C:5 * C] += 0.5  # teacher 1 (share V)
        out_q = raw(model, items, train=True)
        assert not torch.allclose(out_q["aux_outputs"][6]["pred_logits"], out["aux_outputs"][6]["pred_logits"])
        assert not torch.allclose(out_q["denoising_output"]["aux_outputs"][6]["pred_boxes"],
                                  dn["aux_outputs"][6]["pred_boxes"])
        assert torch.equal(out_q["pred_logits"], out["pred_logits"])
        assert torch.equal(out_q["denoising_output"]["pred_logits"], dn["pred_logits"])
        assert torch.equal(out_q["denoising_output"]["aux_outputs"][5]["pred_logits"],
                           dn["aux_outputs"][5]["pred_logits"])


def test_teacher_passes_get_the_same_denoising_queries_and_mask():
    """With teacher projections equal to the student's and X^t = X, all three decoder passes coincide --
    denoising part included -- so the teachers were fed the same noised queries, anchors and mask."""
    model = tiny_model(groups=3).train()
    attn = model.transformer.encoder.layers[5].attentions[0].attn
    items = batch()
    with torch.no_grad():
        attn.in_proj_weight[3 * C:] = attn.in_proj_weight[:3 * C].clone()
        attn.in_proj_bias[3 * C:] = attn.in_proj_bias[:3 * C].clone()
        model.transformer_inputs = lambda *a: {"ks_teacher_tokens": lambda x, padding_mask=None: x}
        out = raw(model, items, train=True)
        del model.transformer_inputs
    assert out["max_gt_num_per_image"] == 2
    dn = out["denoising_output"]
    for part in (out, dn):
        for key in ("pred_logits", "pred_boxes"):
            last_student = part["aux_outputs"][5][key]
            assert torch.allclose(part["aux_outputs"][6][key], last_student, atol=1e-5)
            assert torch.allclose(part[key], last_student, atol=1e-5)


@pytest.mark.parametrize("depth", [50, 101])
def test_top_level_configs(depth):
    configs = check_top_level_configs(CFG_DIR, "ks_dn_detr", depth, KSDNDETR, DNDETR, num_losses=(48, 36))
    for cfg in configs.values():
        assert cfg.model.denoising_groups == 5 and cfg.model.freeze_anchor_box_centers is False
