"""KS-Conditional-DETR end to end: the R50 model from its config (training step, GT-free eval, teacher-only
weights do not reach eval) and a tiny model from the same config for the output layout
(ks_detr_method.md §4.2, §5, §11.4-6)."""
import os

import pytest
import torch

from detrex.config import LazyCall as L
from detrex.config import LazyConfig, instantiate
from projects.conditional_detr.modeling import ConditionalDETR
from projects.ks_detr.modeling import KSConditionalDETR, KSTripleAttnEncoderLayer
from tests.projects.ks_detr.single_scale_helpers import TinyBackbone, batch, expected_keys, raw

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CFG_DIR = os.path.join(ROOT, "projects/ks_detr/configs/ks_conditional_detr")
KS_MODEL_CFG = os.path.join(CFG_DIR, "models/ks_conditional_detr_r50_smlp_qkv_triple_attn.py")
C = 256
NUM_CLASSES = 5


def perturb_teacher_weights(model):
    with torch.no_grad():
        model.ksgt.smlp_module.token_split_conv.linear[0].weight.add_(1.0)
        attn = model.transformer.encoder.layers[5].attentions[0].attn
        attn.in_proj_weight[3 * C:].mul_(-3.0)
        attn.in_proj_bias[3 * C:].add_(1.0)


@pytest.fixture(scope="module")
def r50():
    torch.manual_seed(0)
    model = instantiate(LazyConfig.load(KS_MODEL_CFG).model)
    assert type(model) is KSConditionalDETR and isinstance(model, ConditionalDETR)
    return model


def test_r50_config_training_step(r50):
    wd = r50.criterion.weight_dict
    assert len(wd) == 24 and wd["loss_class"] == wd["loss_class_6"] == 2.0
    assert wd["loss_bbox_3"] == 5.0 and wd["loss_giou_6"] == 2.0
    assert r50.position_embedding.temperature == 10000
    assert not hasattr(r50.transformer.encoder, "query_scale")
    assert isinstance(r50.transformer.encoder.layers[5], KSTripleAttnEncoderLayer)
    assert r50.transformer.encoder.layers[5].attentions[0].attn.in_proj_weight.shape == (6 * C, C)
    assert r50.transformer.encoder.layers[5].attentions[0].attn.dropout == 0.1  # Conditional's attn dropout
    r50.train()
    r50.zero_grad()
    torch.manual_seed(0)
    losses = r50(batch())
    assert set(losses) == expected_keys() and len(losses) == 24
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    smlp_w = r50.ksgt.smlp_module.token_split_conv.linear[0].weight
    in_proj = r50.transformer.encoder.layers[5].attentions[0].attn.in_proj_weight
    assert smlp_w.grad is not None and smlp_w.grad.abs().sum() > 0
    for block in range(3, 6):  # W_q^t, W_k^t, W_v^t
        assert in_proj.grad[block * C:(block + 1) * C].abs().sum() > 0
    r50.zero_grad()


def test_r50_config_eval_without_instances_ignores_teacher_weights(r50):
    r50.eval()
    items = batch(with_instances=False)
    with torch.no_grad():
        before = r50(items)
        raw_before = raw(r50, items, train=False)
        saved = {k: v.clone() for k, v in r50.state_dict().items()
                 if k.startswith("ksgt.") or "layers.5.attentions" in k}
        perturb_teacher_weights(r50)
        after = r50(items)
        raw_after = raw(r50, items, train=False)
        r50.load_state_dict(saved, strict=False)
    assert len(before) == 2 and before[1]["instances"].image_size == (80, 64) and len(before[0]["instances"]) == 300
    assert len(raw_before["aux_outputs"]) == 5  # student only
    assert torch.equal(raw_before["pred_logits"], raw_after["pred_logits"])
    assert torch.equal(raw_before["pred_boxes"], raw_after["pred_boxes"])
    for a, b in zip(before, after):
        assert torch.equal(a["instances"].scores, b["instances"].scores)
        assert torch.equal(a["instances"].pred_boxes.tensor, b["instances"].pred_boxes.tensor)


def tiny_model():
    torch.manual_seed(0)
    cfg = LazyConfig.load(KS_MODEL_CFG).model
    cfg.backbone = L(TinyBackbone)()
    cfg.in_channels = 16
    cfg.num_queries = 8
    cfg.num_classes = NUM_CLASSES
    cfg.criterion.num_classes = NUM_CLASSES
    for part in (cfg.transformer.encoder, cfg.transformer.decoder):
        part.feedforward_dim = 32
        part.attn_dropout = part.ffn_dropout = 0.0  # deterministic: teacher/student outputs comparable
    model = instantiate(cfg)
    with torch.no_grad():  # make the heads and the sMLP non-trivial
        model.bbox_embed.layers[-1].weight.normal_(0, 0.01)
        model.ksgt.smlp_module.token_split_conv.linear[0].bias.normal_(0, 1.0)
    return model


def test_prediction_layout_student_then_teacher1_then_teacher2():
    model = tiny_model()
    items = batch()
    with torch.no_grad():
        student = raw(model, items, train=False)
        out = raw(model, items, train=True)
        assert len(out["aux_outputs"]) == 7
        for i in range(6):  # aux 0..5 = the student's decoder layers (= eval outputs, no dropout)
            ref = student["aux_outputs"][i] if i < 5 else student
            assert torch.allclose(out["aux_outputs"][i]["pred_logits"], ref["pred_logits"], atol=1e-5)
            assert torch.allclose(out["aux_outputs"][i]["pred_boxes"], ref["pred_boxes"], atol=1e-6)
        attn = model.transformer.encoder.layers[5].attentions[0].attn
        attn.in_proj_weight[3 * C:5 * C] += 0.5  # teacher 1 (share V): W_q^t, W_k^t
        out_q = raw(model, items, train=True)
        assert not torch.allclose(out_q["aux_outputs"][6]["pred_logits"], out["aux_outputs"][6]["pred_logits"])
        assert torch.equal(out_q["pred_logits"], out["pred_logits"])
        attn.in_proj_weight[5 * C:] += 0.5  # teacher 2 (share A): W_v^t
        out_v = raw(model, items, train=True)
        assert torch.equal(out_v["aux_outputs"][6]["pred_logits"], out_q["aux_outputs"][6]["pred_logits"])
        assert not torch.allclose(out_v["pred_logits"], out_q["pred_logits"])


def test_teacher_passes_get_the_student_decoder_inputs():
    """With teacher projections equal to the student's and X^t = X, all three decoder passes coincide."""
    model = tiny_model().train()
    attn = model.transformer.encoder.layers[5].attentions[0].attn
    with torch.no_grad():
        attn.in_proj_weight[3 * C:] = attn.in_proj_weight[:3 * C].clone()
        attn.in_proj_bias[3 * C:] = attn.in_proj_bias[:3 * C].clone()
        images = model.preprocess_image(batch())
        feats = model.input_proj(model.backbone(images.tensor)["res5"])
        masks = model.downsample_mask(model.padding_mask(images), feats.shape[-2:])
        pos = model.position_embedding(masks)
        hs, ref = model.transformer(feats, masks, model.query_embed.weight, pos,
                                    ks_teacher_tokens=lambda x, padding_mask=None: x)
        hs_student, ref_student = model.transformer(feats, masks, model.query_embed.weight, pos)
    assert hs.shape[0] == 8 and ref.shape == (2, 8, 2)
    assert torch.equal(ref, ref_student)
    assert torch.allclose(hs[:6], hs_student, atol=1e-5)
    assert torch.allclose(hs[6], hs[5], atol=1e-5) and torch.allclose(hs[7], hs[5], atol=1e-5)


@pytest.mark.parametrize("depth", [50, 101])
def test_top_level_configs(depth):
    from detrex.solver import backbone_lr_factor

    init = {50: "detectron2://ImageNetPretrained/torchvision/R-50.pkl", 101: "output/weights/R-101.pkl"}[depth]
    names = [f"ks_conditional_detr_r{depth}_50ep{s}" for s in
             ("", "_smlp_qkv_triple_attn", "_smlp_qkv_triple_attn_share_outproj_ffn")]
    for name in names:
        cfg = LazyConfig.load(os.path.join(CFG_DIR, f"{name}.py"))
        ks = "triple" in name
        assert cfg.model._target_ is (KSConditionalDETR if ks else ConditionalDETR), name
        assert cfg.model.backbone.stages.depth == depth and cfg.train.init_checkpoint == init
        assert cfg.train.max_iter == 375000 and cfg.train.clip_grad.params.max_norm == 0.1
        assert not cfg.train.amp.enabled
        assert cfg.optimizer.lr == 1e-4 and cfg.optimizer.weight_decay == 1e-4
        assert cfg.optimizer.params.lr_factor_func is backbone_lr_factor
        assert len(cfg.model.criterion.weight_dict) == (24 if ks else 18)
        assert cfg.dataloader.train.total_batch_size == 16
        out = name.replace("_share_outproj_ffn", "")
        assert cfg.train.output_dir == f"./output/{out}" == cfg.dataloader.evaluator.output_dir
