"""KS-DN-DETR end to end: the R50 model from its config (training step with 48 loss keys, GT-free eval,
teacher-only weights do not reach eval) and a tiny model from the same config for the output layout and the
teachers' denoising inputs (ks_detr_method.md §4.2, §5, §11.4-6)."""
import os

import pytest
import torch

from detrex.config import LazyCall as L
from detrex.config import LazyConfig, instantiate
from detrex.modeling.criterion.dn_criterion import DNCriterion
from projects.dn_detr.modeling import DNDETR
from projects.ks_detr.modeling import KSDNDETR, KSTripleAttnEncoderLayer
from tests.projects.ks_detr import single_scale_helpers
from tests.projects.ks_detr.single_scale_helpers import TinyBackbone, batch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CFG_DIR = os.path.join(ROOT, "projects/ks_detr/configs/ks_dn_detr")
KS_MODEL_CFG = os.path.join(CFG_DIR, "models/ks_dn_detr_r50_smlp_qkv_triple_attn.py")
C = 256  # the DAB decoder's anchor sine embedding is fixed at 4 x 128 = 2C channels
NUM_CLASSES = 5


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
    r50.train()
    r50.zero_grad()
    torch.manual_seed(0)
    losses = r50(batch())
    assert set(losses) == expected_keys() and len(losses) == 48
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    smlp_w = r50.ksgt.smlp_module.token_split_conv.linear[0].weight
    in_proj = r50.transformer.encoder.layers[5].attentions[0].attn.in_proj_weight
    assert smlp_w.grad is not None and smlp_w.grad.abs().sum() > 0
    for block in range(3, 6):  # W_q^t, W_k^t, W_v^t
        assert in_proj.grad[block * C:(block + 1) * C].abs().sum() > 0
    assert r50.denoising_generator.label_encoder.weight.grad.abs().sum() > 0
    r50.zero_grad()


def test_r50_config_eval_without_instances_ignores_teacher_weights(r50):
    r50.eval()
    items = batch(with_instances=False)
    with torch.no_grad():
        before = r50(items)
        raw_before = raw(r50, items, train=False)
        saved = {k: v.clone() for k, v in r50.state_dict().items()
                 if k.startswith("ksgt.") or "layers.5.attentions" in k}
        r50.ksgt.smlp_module.token_split_conv.linear[0].weight.add_(1.0)
        attn = r50.transformer.encoder.layers[5].attentions[0].attn
        attn.in_proj_weight[3 * C:].mul_(-3.0)
        attn.in_proj_bias[3 * C:].add_(1.0)
        after = r50(items)
        raw_after = raw(r50, items, train=False)
        r50.load_state_dict(saved, strict=False)
    assert len(before) == 2 and before[1]["instances"].image_size == (80, 64) and len(before[0]["instances"]) == 300
    assert raw_before["denoising_output"] is None and len(raw_before["aux_outputs"]) == 5
    assert raw_before["pred_logits"].shape == (2, 300, 80)
    assert torch.equal(raw_before["pred_logits"], raw_after["pred_logits"])
    assert torch.equal(raw_before["pred_boxes"], raw_after["pred_boxes"])
    for a, b in zip(before, after):
        assert torch.equal(a["instances"].scores, b["instances"].scores)
        assert torch.equal(a["instances"].pred_boxes.tensor, b["instances"].pred_boxes.tensor)


def tiny_model(groups=3):
    torch.manual_seed(0)
    cfg = LazyConfig.load(KS_MODEL_CFG).model
    cfg.backbone = L(TinyBackbone)()
    cfg.in_channels = 16
    cfg.num_queries = 8
    cfg.num_classes = NUM_CLASSES
    cfg.criterion.num_classes = NUM_CLASSES
    cfg.denoising_groups = groups
    cfg.transformer.encoder.feedforward_dim = 32  # dropout is 0.0 in DN-DETR
    cfg.transformer.decoder.feedforward_dim = 32
    model = instantiate(cfg)
    with torch.no_grad():  # make the heads and the sMLP non-trivial
        model.bbox_embed.layers[-1].weight.normal_(0, 0.01)
        model.ksgt.smlp_module.token_split_conv.linear[0].bias.normal_(0, 1.0)
    return model


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
    from detrex.solver import backbone_lr_factor

    init = {50: "detectron2://ImageNetPretrained/torchvision/R-50.pkl", 101: "output/weights/R-101.pkl"}[depth]
    names = [f"ks_dn_detr_r{depth}_50ep{s}" for s in
             ("", "_smlp_qkv_triple_attn", "_smlp_qkv_triple_attn_share_outproj_ffn")]
    for name in names:
        cfg = LazyConfig.load(os.path.join(CFG_DIR, f"{name}.py"))
        ks = "triple" in name
        assert cfg.model._target_ is (KSDNDETR if ks else DNDETR), name
        assert cfg.model.backbone.stages.depth == depth and cfg.train.init_checkpoint == init
        assert cfg.train.max_iter == 375000 and cfg.train.clip_grad.params.max_norm == 0.1
        assert not cfg.train.amp.enabled
        assert cfg.optimizer.lr == 1e-4 and cfg.optimizer.weight_decay == 1e-4
        assert cfg.optimizer.params.lr_factor_func is backbone_lr_factor
        assert len(cfg.model.criterion.weight_dict) == (48 if ks else 36)
        assert cfg.model.denoising_groups == 5 and cfg.model.freeze_anchor_box_centers is False
        out = name.replace("_share_outproj_ffn", "")
        assert cfg.train.output_dir == f"./output/{out}" == cfg.dataloader.evaluator.output_dir
