"""KS-DAB-DETR end to end on a tiny model built from the KS model config (ks_detr_method.md §4.2, §5, §11.4-6)."""
import os

import pytest
import torch

from detrex.config import LazyCall as L
from detrex.config import LazyConfig, instantiate
from projects.ks_detr.modeling import KSDABDETR
from tests.projects.ks_detr.single_scale_helpers import TinyBackbone, batch, expected_keys, raw

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
KS_MODEL_CFG = os.path.join(ROOT, "projects/ks_detr/configs/ks_dab_detr/models/ks_dab_detr_r50_smlp_qkv_triple_attn.py")
C = 256  # the DAB decoder's anchor sine embedding is fixed at 4 x 128 = 2C channels
NUM_CLASSES = 5


def tiny_model(mode="triple"):
    torch.manual_seed(0)
    cfg = LazyConfig.load(KS_MODEL_CFG).model
    cfg.backbone = L(TinyBackbone)()
    cfg.in_channels = 16
    cfg.num_queries = 8
    cfg.num_classes = NUM_CLASSES
    cfg.criterion.num_classes = NUM_CLASSES
    cfg.transformer.encoder.feedforward_dim = 32
    cfg.transformer.decoder.feedforward_dim = 32
    cfg.transformer.encoder.ks_mode = mode
    model = instantiate(cfg)
    assert isinstance(model, KSDABDETR)
    with torch.no_grad():  # make the heads and teacher rows non-trivial
        model.bbox_embed.layers[-1].weight.normal_(0, 0.01)
        model.ksgt.smlp_module.token_split_conv.linear[0].bias.normal_(0, 1.0)
    return model


def test_training_step_losses_and_gradients():
    model = tiny_model().train()
    losses = model(batch())
    assert set(losses) == expected_keys(7) and len(losses) == 24
    sum(losses.values()).backward()
    smlp_w = model.ksgt.smlp_module.token_split_conv.linear[0].weight
    in_proj = model.transformer.encoder.layers[5].attentions[0].attn.in_proj_weight
    assert smlp_w.grad is not None and smlp_w.grad.abs().sum() > 0
    for block in range(3, 6):  # W_q^t, W_k^t, W_v^t
        assert in_proj.grad[block * C:(block + 1) * C].abs().sum() > 0


def test_prediction_layout_student_then_teacher1_then_teacher2():
    model = tiny_model()
    items = batch()
    with torch.no_grad():
        student = raw(model, items, train=False)
        out = raw(model, items, train=True)
        assert len(out["aux_outputs"]) == 7
        # aux 0..5 are the student's decoder layers: dropout is 0, so they equal eval outputs
        for i in range(6):
            ref = student["aux_outputs"][i] if i < 5 else student
            assert torch.allclose(out["aux_outputs"][i]["pred_logits"], ref["pred_logits"], atol=1e-5)
        # teacher 1 (share V) uses rows 3C:5C, teacher 2 (share A) rows 5C:6C
        attn = model.transformer.encoder.layers[5].attentions[0].attn
        attn.in_proj_weight[3 * C:5 * C] += 0.5
        out_q = raw(model, items, train=True)
        assert not torch.allclose(out_q["aux_outputs"][6]["pred_logits"], out["aux_outputs"][6]["pred_logits"])
        assert torch.equal(out_q["pred_logits"], out["pred_logits"])
        attn.in_proj_weight[5 * C:] += 0.5
        out_v = raw(model, items, train=True)
        assert torch.equal(out_v["aux_outputs"][6]["pred_logits"], out_q["aux_outputs"][6]["pred_logits"])
        assert not torch.allclose(out_v["pred_logits"], out_q["pred_logits"])
        # the GT mask reaches the teachers: without foreground tokens sMLP is the identity
        assert not torch.allclose(out_v["pred_logits"], out_v["aux_outputs"][5]["pred_logits"])


def test_eval_without_instances_ignores_teacher_weights():
    model = tiny_model().eval()
    with torch.no_grad():
        before = model(batch(with_instances=False))
        raw_before = raw(model, batch(False), train=False)
        model.ksgt.smlp_module.token_split_conv.linear[0].weight.add_(1.0)
        model.transformer.encoder.layers[5].attentions[0].attn.in_proj_weight[3 * C:].mul_(-3.0)
        model.transformer.encoder.layers[5].attentions[0].attn.in_proj_bias[3 * C:].add_(1.0)
        after = model(batch(with_instances=False))
        raw_after = raw(model, batch(False), train=False)
    assert len(before) == 2 and before[0]["instances"].image_size == (64, 96)
    assert torch.equal(raw_before["pred_logits"], raw_after["pred_logits"])
    assert torch.equal(raw_before["pred_boxes"], raw_after["pred_boxes"])
    assert len(raw_before["aux_outputs"]) == 5  # student only: no teacher sets at eval
    for a, b in zip(before, after):
        assert torch.equal(a["instances"].scores, b["instances"].scores)
        assert torch.equal(a["instances"].pred_boxes.tensor, b["instances"].pred_boxes.tensor)


@pytest.mark.parametrize("mode,rows", [("dual_share_a", 4), ("dual_share_v", 5)])
def test_dual_variants(mode, rows):
    model = tiny_model(mode)
    attn = model.transformer.encoder.layers[5].attentions[0].attn
    assert attn.in_proj_weight.shape == (rows * C, C)
    out = raw(model, batch(), train=True)
    assert len(out["aux_outputs"]) == 6  # 7 prediction sets
    losses = model(batch())
    assert set(losses) == expected_keys(6) and len(losses) == 21
    sum(losses.values()).backward()
    assert attn.in_proj_weight.grad[3 * C:].abs().sum() > 0
    assert model.ksgt.smlp_module.token_split_conv.linear[0].weight.grad.abs().sum() > 0
