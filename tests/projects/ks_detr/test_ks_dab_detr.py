"""KS-DAB-DETR end to end on a tiny model built from the KS model config (ks_detr_method.md §4.2, §5, §11.4-6)."""
import os

import pytest
import torch

from projects.ks_detr.modeling import KSDABDETR
from tests.projects import model_helpers as mh
from tests.projects.ks_detr.single_scale_helpers import C, batch, check_ks_training_step, check_student_then_teachers
from tests.projects.ks_detr.single_scale_helpers import eval_ignoring_teacher_weights, expected_keys, raw, tiny_ks_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
KS_MODEL_CFG = os.path.join(ROOT, "projects/ks_detr/configs/ks_dab_detr/models/ks_dab_detr_r50_smlp_qkv_triple_attn.py")


def tiny_model(mode="triple"):
    model = tiny_ks_model(KS_MODEL_CFG, {"transformer.encoder.ks_mode": mode})
    assert isinstance(model, KSDABDETR)
    return model


def test_training_step_losses_and_gradients():
    losses = check_ks_training_step(tiny_model(), expected_keys(7))
    assert len(losses) == 24


def test_prediction_layout_student_then_teacher1_then_teacher2():
    out_v = check_student_then_teachers(tiny_model(), batch(), compare_boxes=False)
    # the GT mask reaches the teachers: without foreground tokens sMLP is the identity
    assert not torch.allclose(out_v["pred_logits"], out_v["aux_outputs"][5]["pred_logits"])


def test_eval_without_instances_ignores_teacher_weights():
    before, raw_before = eval_ignoring_teacher_weights(tiny_model(), batch(with_instances=False))
    assert len(before) == 2 and before[0]["instances"].image_size == (64, 96)
    assert len(raw_before["aux_outputs"]) == 5  # student only: no teacher sets at eval


@pytest.mark.parametrize("mode,rows", [("dual_share_a", 4), ("dual_share_v", 5)])
def test_dual_variants(mode, rows):
    model = tiny_model(mode)
    attn = model.transformer.encoder.layers[5].attentions[0].attn
    assert attn.in_proj_weight.shape == (rows * C, C)
    out = raw(model, batch(), train=True)
    assert len(out["aux_outputs"]) == 6  # 7 prediction sets
    losses = mh.check_training_step(model, batch(), expected_keys(6))
    assert len(losses) == 21
    assert attn.in_proj_weight.grad[3 * C:].abs().sum() > 0
    assert model.ksgt.smlp_module.token_split_conv.linear[0].weight.grad.abs().sum() > 0
