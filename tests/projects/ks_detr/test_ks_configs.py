"""The KS-DAB-DETR configs load and describe the documented variants (ks_detr_method.md §7)."""
import os

import pytest

from detrex.config import LazyConfig
from detrex.config.targets import target_to_string

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CFG = os.path.join(ROOT, "projects/ks_detr/configs/ks_dab_detr")
R50 = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
R101 = "output/weights/R-101.pkl"


def _name(target):
    return target_to_string(target).rsplit(".", 1)[-1]


@pytest.mark.parametrize("fname,depth,mode,weights", [
    ("ks_dab_detr_r50_50ep_smlp_qkv_triple_attn.py", 50, "triple", R50),
    ("ks_dab_detr_r101_50ep_smlp_qkv_triple_attn.py", 101, "triple", R101),
    ("ks_dab_detr_r50_50ep_smlp_qkv_triple_attn_share_outproj_ffn.py", 50, "triple", R50),
    ("ks_dab_detr_r101_50ep_smlp_qkv_triple_attn_share_outproj_ffn.py", 101, "triple", R101),
    ("ks_dab_detr_r101_50ep_smlp_dual_attn_share_a.py", 101, "dual_share_a", R101),
    ("ks_dab_detr_r101_50ep_smlp_dual_attn_share_v.py", 101, "dual_share_v", R101),
])
def test_ks_configs(fname, depth, mode, weights):
    cfg = LazyConfig.load(os.path.join(CFG, fname))
    assert _name(cfg.model._target_) == "KSDABDETR"
    assert _name(cfg.model.transformer.encoder._target_) == "KSDabDetrTransformerEncoder"
    assert cfg.model.transformer.encoder.ks_mode == mode
    assert cfg.model.ksgt.mask_rule == "authors" and cfg.model.ksgt.pad_fg_pixel == 0
    assert cfg.model.backbone.stages.depth == depth
    assert cfg.train.init_checkpoint == weights
    # recipe (§7.1)
    assert cfg.optimizer.lr == 1e-4 and cfg.optimizer.weight_decay == 1e-4
    assert cfg.train.max_iter == 375000 and cfg.train.clip_grad.params.max_norm == 0.1
    assert cfg.train.amp.enabled is False and cfg.dataloader.train.total_batch_size == 16
    wd = cfg.model.criterion.weight_dict
    for i in range(7):
        assert wd[f"loss_class_{i}"] == 1 and wd[f"loss_bbox_{i}"] == 5.0 and wd[f"loss_giou_{i}"] == 2.0


@pytest.mark.parametrize("fname,depth", [("ks_dab_detr_r50_50ep.py", 50), ("ks_dab_detr_r101_50ep.py", 101)])
def test_baseline_twins_are_dab_detr(fname, depth):
    cfg = LazyConfig.load(os.path.join(CFG, fname))
    assert _name(cfg.model._target_) == "DABDETR" and "ksgt" not in cfg.model
    assert cfg.model.backbone.stages.depth == depth
