"""KS-Conditional-DETR end to end: the R50 model from its config (training step, GT-free eval, teacher-only
weights do not reach eval) and a tiny model from the same config for the output layout
(ks_detr_method.md §4.2, §5, §11.4-6)."""
import os

import pytest
import torch

from detrex.config import LazyConfig, instantiate
from projects.conditional_detr.modeling import ConditionalDETR
from projects.ks_detr.modeling import KSConditionalDETR, KSTripleAttnEncoderLayer
from tests.projects.ks_detr.single_scale_helpers import C, batch, check_ks_training_step, check_student_then_teachers
from tests.projects.ks_detr.single_scale_helpers import check_top_level_configs, eval_ignoring_teacher_weights
from tests.projects.ks_detr.single_scale_helpers import expected_keys, tiny_ks_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CFG_DIR = os.path.join(ROOT, "projects/ks_detr/configs/ks_conditional_detr")
KS_MODEL_CFG = os.path.join(CFG_DIR, "models/ks_conditional_detr_r50_smlp_qkv_triple_attn.py")


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
    losses = check_ks_training_step(r50, expected_keys())
    assert len(losses) == 24
    r50.zero_grad()


def test_r50_config_eval_without_instances_ignores_teacher_weights(r50):
    before, raw_before = eval_ignoring_teacher_weights(r50, batch(with_instances=False))
    assert len(before) == 2 and before[1]["instances"].image_size == (80, 64) and len(before[0]["instances"]) == 300
    assert len(raw_before["aux_outputs"]) == 5  # student only


def tiny_model():
    # no dropout: teacher/student outputs comparable
    no_dropout = {f"transformer.{part}.{kind}_dropout": 0.0
                  for part in ("encoder", "decoder") for kind in ("attn", "ffn")}
    return tiny_ks_model(KS_MODEL_CFG, no_dropout)


def test_prediction_layout_student_then_teacher1_then_teacher2():
    check_student_then_teachers(tiny_model(), batch(), compare_boxes=True)


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
    configs = check_top_level_configs(CFG_DIR, "ks_conditional_detr", depth, KSConditionalDETR, ConditionalDETR,
                                      num_losses=(24, 18))
    for cfg in configs.values():
        assert cfg.dataloader.train.total_batch_size == 16
