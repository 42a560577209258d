"""KS-DAB-DETR Swin-T/Swin-S configs (ks_detr_method.md §7.3): the authors' backbone settings and init
weights, the R50 recipe, baseline twins; a KS model built from the Swin-T config with a tiny Swin (command-line
style overrides) trains one step (24 loss keys) and evaluates without annotations."""
import os

import pytest
import torch

from detrex.config import LazyConfig, instantiate
from detrex.modeling.backbone.swin import SwinTransformer
from projects.dab_detr.modeling import DABDETR
from projects.ks_detr.modeling import KSDABDETR, KSTripleAttnEncoderLayer
from tests.projects import model_helpers as mh

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CFG_DIR = os.path.join(ROOT, "projects/ks_detr/configs/ks_dab_detr")
TINY_SWIN = [
    "model.backbone.embed_dim=32",
    "model.backbone.depths=[1,1,1,1]",
    "model.backbone.num_heads=[1,1,2,2]",
    "model.in_channels=256",
    "model.num_queries=12",
    "model.select_box_nums_for_evaluation=12",
    "model.transformer.encoder.num_layers=2",  # one regular layer + the KS layer
    "model.transformer.encoder.feedforward_dim=64",
    "model.transformer.decoder.feedforward_dim=64",
]


@pytest.mark.parametrize("size,depths,dpr", [("tiny", [2, 2, 6, 2], 0.1), ("small", [2, 2, 18, 2], 0.2)])
def test_swin_configs_hold_the_authors_settings(size, depths, dpr):
    weights = f"output/weights/swin_{size}_patch4_window7_224_22kto1k_finetune.pth"
    for suffix, target in (("_smlp_qkv_triple_attn", KSDABDETR), ("", DABDETR)):
        name = f"ks_dab_detr_swin_{size}_50ep{suffix}"
        cfg = LazyConfig.load(os.path.join(CFG_DIR, f"{name}.py"))
        assert cfg.model._target_ is target, name
        bb = cfg.model.backbone
        assert bb._target_ is SwinTransformer
        assert bb.embed_dim == 96 and list(bb.depths) == depths and list(bb.num_heads) == [3, 6, 12, 24]
        assert bb.drop_path_rate == dpr and list(bb.out_indices) == [3]
        assert list(cfg.model.in_features) == ["p3"] and cfg.model.in_channels == 768
        assert cfg.train.init_checkpoint == weights
        assert cfg.train.max_iter == 375000 and cfg.optimizer.lr == 1e-4 and cfg.train.clip_grad.params.max_norm == 0.1
        assert cfg.train.output_dir == f"./output/{name}" == cfg.dataloader.evaluator.output_dir
        assert len(cfg.model.criterion.weight_dict) == (24 if suffix else 18)
        if suffix:
            assert cfg.model.transformer.encoder.ks_mode == "triple" and cfg.model.ksgt.embed_dim == 256


def _build(name):
    cfg = LazyConfig.apply_overrides(LazyConfig.load(os.path.join(CFG_DIR, f"{name}.py")), TINY_SWIN)
    torch.manual_seed(0)
    return instantiate(cfg.model)


def _batch(with_instances=True):
    """64x96 and 80x64 images, one box of class 1 each."""
    return mh.two_image_batch(mh.ONE_BOX_EACH, with_instances)


def test_ks_swin_tiny_trains_and_evaluates_without_annotations():
    model = _build("ks_dab_detr_swin_tiny_50ep_smlp_qkv_triple_attn")
    assert isinstance(model, KSDABDETR) and isinstance(model.backbone, SwinTransformer)
    assert isinstance(model.transformer.encoder.layers[-1], KSTripleAttnEncoderLayer)
    mh.check_training_step(model, _batch(), mh.loss_keys(7))  # loss_{class,bbox,giou}{,_0.._6}
    assert model.ksgt.smlp_module.token_split_conv.linear[0].weight.grad.abs().sum() > 0
    results = mh.eval_without_instances(model, _batch(with_instances=False))
    mh.check_detections(results[0], size=(64, 96))
    mh.check_detections(results[1], count=12)
    assert torch.isfinite(results[1].scores).all()


def test_ks_swin_small_state_dict_is_the_baseline_twin_plus_teacher_weights():
    ks = _build("ks_dab_detr_swin_small_50ep_smlp_qkv_triple_attn").state_dict()
    base = _build("ks_dab_detr_swin_small_50ep").state_dict()
    assert [k for k in ks if not k.startswith("ksgt.")] == list(base)
    assert any(k.startswith("backbone.layers.") for k in base) and "backbone.norm3.weight" in base
    for k, v in base.items():
        expected = v.shape
        if k.startswith("transformer.encoder.layers.1.attentions.0.attn.in_proj_"):
            expected = (2 * v.shape[0],) + tuple(v.shape[1:])  # [6C, C] packed triple attention
        assert ks[k].shape == expected, k
