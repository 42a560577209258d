"""KS-DN-Deformable-DETR (ks_detr_method.md §4.2, §4.4, §5, §7): the R50 model from its config trains one step
(48 loss keys: matching and denoising parts of 8 prediction sets; gradients reach the sMLP and the teacher
projections) and evaluates without annotations; teacher-only weights never change eval outputs; the teacher
decoder passes get the student's noised denoising queries and attention mask; configs."""
import os

import pytest
import torch
from omegaconf import OmegaConf

from detrex.config import LazyConfig
from detrex.config.targets import target_to_string
from detrex.modeling.criterion.dn_criterion import DNCriterion
from projects.dn_deformable_detr.modeling import DNDeformableDetrTransformerDecoder
from projects.ks_detr.modeling.ks_deformable_transformer import KSDNDeformableDetrTransformer
from projects.ks_detr.modeling.ks_deformable_transformer import KSDNDeformableDetrTransformerEncoder
from projects.ks_detr.modeling.ks_dn_deformable_detr import KSDNDeformableDETR
from projects.ks_detr.modeling.smlp import KSGT
from tests.projects import model_helpers as mh
from tests.projects.ks_detr.multi_scale_helpers import build_ks_r50, eval_ignoring_teacher_weights
from tests.projects.ks_detr.multi_scale_helpers import training_step_with_config_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CFG = os.path.join(ROOT, "projects/ks_detr/configs/ks_dn_deformable_detr")
WEIGHTS = dict(mh.BASE_WEIGHTS, **mh.DN_WEIGHTS)


def _name(target):
    return target_to_string(target).rsplit(".", 1)[-1]


def loss_keys(num_aux):
    return mh.loss_keys(num_aux, denoising=True)


def batch(with_instances=True):
    """64x80 and 72x64 images, padded to 72x80."""
    return mh.two_image_batch(mh.SMALL, with_instances)


def tiny_model(num_classes=5, num_queries=8, dec_layers=3, groups=3):
    torch.manual_seed(0)
    ksgt = KSGT(32)  # built first: the seed gives the weights it always did
    parts = mh.multi_scale_parts()
    transformer = KSDNDeformableDetrTransformer(
        encoder=KSDNDeformableDetrTransformerEncoder(32, 2, feedforward_dim=64, attn_dropout=0.0,
                                                     ffn_dropout=0.0, num_layers=2),
        decoder=DNDeformableDetrTransformerDecoder(32, 2, feedforward_dim=64, attn_dropout=0.0, ffn_dropout=0.0,
                                                   num_layers=dec_layers),
    )
    return mh.tiny_detector(KSDNDeformableDETR, parts, transformer, DNCriterion,
                            mh.weight_dict(WEIGHTS, dec_layers + 1), num_classes, num_queries, ksgt=ksgt,
                            denoising_groups=groups)


def _sets(out):
    """The prediction sets of one part (matching or denoising), aux first, main last."""
    return out["aux_outputs"] + [{"pred_logits": out["pred_logits"], "pred_boxes": out["pred_boxes"]}]


def test_r50_config_training_step_and_gt_free_eval():
    cfg, model, layer = build_ks_r50(os.path.join(CFG, "ks_dn_deformable_detr_r50_12ep_smlp_qkv_triple_attn.py"),
                                     KSDNDeformableDETR)
    assert layer.attention_weights_teacher.weight.abs().max() > 0.05  # xavier (§4.4), not zero

    training_step_with_config_optimizer(cfg, model, batch(), loss_keys(7),  # 48 keys
                                        **{"label encoder": model.denoising_generator.label_encoder.weight})

    # eval at the requested sizes; teacher-only weights do not change eval outputs
    results, raw = eval_ignoring_teacher_weights(model, batch(with_instances=False))
    assert [r["instances"].image_size for r in results] == [(64, 80), (72, 64)]
    assert raw["denoising_output"] is None and len(raw["aux_outputs"]) == 5


def test_teacher_passes_share_the_denoising_queries_and_mask():
    model = tiny_model(dec_layers=3, groups=3)
    model.train()
    images = model.preprocess_image(batch())
    targets = model.prepare_targets(batch())
    student = model.forward_raw(images, None)  # no targets: the baseline (student) path, no denoising queries

    torch.manual_seed(5)
    out = model.forward_raw(images, targets)
    assert out["denoising_groups"] == 3 and out["max_gt_num_per_image"] == 2
    sets, dn_sets = _sets(out), _sets(out["denoising_output"])
    assert len(sets) == len(dn_sets) == 5  # 3 student layers, teacher 1 final, teacher 2 final
    assert dn_sets[0]["pred_logits"].shape == (2, 3 * 2, 5)
    for ours, theirs in zip(sets[:3], _sets(student)):  # the mask hides the denoising queries from matching ones
        assert torch.allclose(ours["pred_logits"], theirs["pred_logits"], atol=1e-5)
        assert torch.allclose(ours["pred_boxes"], theirs["pred_boxes"], atol=1e-6)
    # GT-assisted teacher (boxes are not compared: the zero-initialised box heads give the anchors at first)
    assert not torch.allclose(dn_sets[4]["pred_logits"], dn_sets[2]["pred_logits"], atol=1e-4)

    # teachers identical to the student: their denoising and matching outputs equal the student's final layer,
    # which needs the same noised queries, anchors and attention mask in every pass
    attn = model.transformer.encoder.layers[-1].attentions[0]
    attn.attention_weights_teacher.load_state_dict(attn.attention_weights.state_dict())
    attn.value_proj_teacher.load_state_dict(attn.value_proj.state_dict())
    model.ks_teacher_tokens = lambda images, levels, targets: (lambda x, padding_mask=None: x)
    torch.manual_seed(5)
    out = model.forward_raw(images, targets)
    for part in (_sets(out), _sets(out["denoising_output"])):
        for teacher in part[3:]:
            assert torch.allclose(teacher["pred_logits"], part[2]["pred_logits"], atol=1e-5)
            assert torch.allclose(teacher["pred_boxes"], part[2]["pred_boxes"], atol=1e-6)


def test_training_losses_of_tiny_model():
    model = tiny_model(dec_layers=2)
    mh.check_training_step(model, batch(), loss_keys(3), backward=False)  # 2 student layers, teacher 1, teacher 2


@pytest.mark.parametrize("epochs,max_iter,drop", [(12, 90000, 82500), (50, 375000, 300000)])
@pytest.mark.parametrize("ks", [True, False])
def test_configs(epochs, max_iter, drop, ks):
    cfg = LazyConfig.load(os.path.join(CFG, f"ks_dn_deformable_detr_r50_{epochs}ep"
                                            f"{'_smlp_qkv_triple_attn' if ks else ''}.py"))
    m = cfg.model
    if ks:
        assert _name(m._target_) == "KSDNDeformableDETR"
        assert _name(m.transformer._target_) == "KSDNDeformableDetrTransformer"
        assert _name(m.transformer.encoder._target_) == "KSDNDeformableDetrTransformerEncoder"
        assert m.ksgt.mask_rule == "authors" and m.ksgt.pad_fg_pixel == 0
        wd = m.criterion.weight_dict
        for i in range(7):
            for k, v in WEIGHTS.items():
                assert wd[f"{k}_{i}"] == v
    else:
        assert _name(m._target_) == "DNDeformableDETR" and "ksgt" not in m
    # §7.2: FFN 2048, no dropout, 5 denoising groups
    assert m.transformer.encoder.feedforward_dim == 2048 and m.transformer.encoder.attn_dropout == 0.0
    assert m.denoising_groups == 5 and m.backbone.stages.depth == 50
    assert cfg.train.init_checkpoint == mh.R50_INIT
    assert cfg.train.max_iter == max_iter and list(cfg.lr_multiplier.scheduler.milestones) == [drop, max_iter]
    assert cfg.optimizer.lr == 1e-4 and cfg.train.clip_grad.params.max_norm == 0.1


def test_readme_linked_name_is_an_alias():
    src = "ks_dn_deformable_detr_r50_12ep_smlp_qkv_triple_attn"
    alias = LazyConfig.load(os.path.join(CFG, f"{src}_outproj_ffn_v0.py"))
    cfg = LazyConfig.load(os.path.join(CFG, f"{src}.py"))
    for key in ("model", "train", "optimizer", "lr_multiplier", "dataloader"):
        assert OmegaConf.to_container(alias[key]) == OmegaConf.to_container(cfg[key]), key
