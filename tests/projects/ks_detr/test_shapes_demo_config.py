"""The README's main-job config (KS-DAB-DETR on the shapes dataset) and its DAB-DETR twin.

Fast: the configs load, the KS model is a real KS-DAB-DETR (triple last encoder layer, teacher decoder passes in
training, student-only GT-free eval) built from random init, one training step and one eval forward run on CPU,
and the twin differs from it only in the KS parts. No dataset is generated (inputs are made here).
"""
import math
import os

import pytest
import torch
from omegaconf import OmegaConf

from detrex.config import LazyConfig, instantiate
from detrex.config.targets import target_to_string
from detrex.data import DatasetCatalog, MetadataCatalog
from detrex.structures import Boxes, Instances

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
KS_DEMO = os.path.join(ROOT, "projects/ks_detr/configs/ks_dab_detr/ks_dab_detr_shapes_demo.py")
DAB_DEMO = os.path.join(ROOT, "projects/dab_detr/configs/dab_detr_shapes_demo.py")


def _name(target):
    return target_to_string(target).rsplit(".", 1)[-1]


@pytest.fixture(scope="module")
def ks_cfg():
    return LazyConfig.load(KS_DEMO)


@pytest.fixture(scope="module")
def dab_cfg():
    return LazyConfig.load(DAB_DEMO)


def _inputs(with_instances, num_classes):
    """Two shapes-like images (uint8, sizes as the demo's test resize gives) with 1 and 3 boxes."""
    g = torch.Generator().manual_seed(0)
    items = []
    for (h, w), boxes in (
        ((128, 150), [[10.0, 12.0, 60.0, 58.0]]),
        ((140, 128), [[4.0, 6.0, 40.0, 44.0], [60.0, 20.0, 120.0, 80.0], [30.0, 90.0, 70.0, 136.0]]),
    ):
        x = {"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g), "height": h, "width": w}
        if with_instances:
            classes = torch.arange(len(boxes)) % num_classes
            x["instances"] = Instances((h, w), gt_boxes=Boxes(torch.tensor(boxes)), gt_classes=classes)
        items.append(x)
    return items


def test_demo_is_a_small_random_init_ks_dab_detr(ks_cfg):
    m = ks_cfg.model
    assert _name(m._target_) == "KSDABDETR"
    assert _name(m.transformer._target_) == "KSDabDetrTransformer"
    assert _name(m.transformer.encoder._target_) == "KSDabDetrTransformerEncoder"
    assert m.transformer.encoder.ks_mode == "triple"
    # widths agree everywhere (the sMLP works on the encoder tokens)
    assert m.ksgt.embed_dim == m.embed_dim == m.transformer.encoder.embed_dim == m.transformer.decoder.embed_dim
    assert m.position_embedding.num_pos_feats * 2 == m.embed_dim
    # small: ResNet-18 family, a few queries, few layers
    assert m.backbone.stages.depth == 18 and m.num_queries <= 30
    assert m.transformer.encoder.num_layers <= 3 and m.transformer.decoder.num_layers <= 3
    # random init: no weights to download, and trainable (not frozen) batch norms
    assert ks_cfg.train.init_checkpoint == ""
    assert m.backbone.stem.norm != "FrozenBN" and m.backbone.stages.norm != "FrozenBN"
    # one loss set per decoder layer of the student, + teacher 1 (suffix L) + teacher 2 (no suffix)
    num_layers = m.transformer.decoder.num_layers
    wd = m.criterion.weight_dict
    assert {k for k in wd if not k[-1].isdigit()} == {"loss_class", "loss_bbox", "loss_giou"}
    assert {int(k.rsplit("_", 1)[1]) for k in wd if k[-1].isdigit()} == set(range(num_layers + 1))


def test_demo_data_matches_the_model(ks_cfg):
    train_name = ks_cfg.dataloader.train.dataset.names
    test_name = ks_cfg.dataloader.test.dataset.names
    assert test_name == "shapes_val"  # the demo's AP is the default val set's AP
    assert train_name in DatasetCatalog and test_name in DatasetCatalog
    train_meta, val_meta = MetadataCatalog.get(train_name), MetadataCatalog.get(test_name)
    assert ks_cfg.model.num_classes == ks_cfg.model.criterion.num_classes == len(val_meta.thing_classes)
    assert train_meta.thing_classes == val_meta.thing_classes
    # the demo's training set is the default distribution, only with more images
    demo, default = dict(train_meta.shapes_config), dict(MetadataCatalog.get("shapes_train").shapes_config)
    assert demo.pop("num_train") > default.pop("num_train")
    assert demo == default
    # loading the config again does not register the variant twice
    LazyConfig.load(KS_DEMO)


def test_schedule_warms_up_and_drops_at_the_end(ks_cfg):
    mult = instantiate(ks_cfg.lr_multiplier)
    assert mult(0.0) < 0.1
    assert mult(0.5) == pytest.approx(1.0)
    assert mult(0.99) < 0.5


def test_twin_has_identical_settings_except_the_ks_parts(ks_cfg, dab_cfg):
    for key in ("dataloader", "optimizer", "lr_multiplier"):  # unresolved: the evaluator writes to train.output_dir
        assert OmegaConf.to_container(ks_cfg[key]) == OmegaConf.to_container(dab_cfg[key]), key
    assert ks_cfg.dataloader.evaluator.output_dir == ks_cfg.train.output_dir
    ks_train = {k: v for k, v in ks_cfg.train.items() if k != "output_dir"}
    dab_train = {k: v for k, v in dab_cfg.train.items() if k != "output_dir"}
    assert ks_train == dab_train
    assert ks_cfg.train.output_dir != dab_cfg.train.output_dir

    ks_model, dab_model = ks_cfg.model, dab_cfg.model
    assert _name(dab_model._target_) == "DABDETR" and "ksgt" not in dab_model
    # same values for every key except the KS ones
    ks_only = {"_target_", "ksgt", "ks_mode", "weight_dict"}

    def flat(node, prefix=""):
        out = {}
        for k, v in node.items():
            if k in ks_only:
                continue
            if hasattr(v, "items"):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    assert flat(ks_model) == flat(dab_model)
    base = {k: v for k, v in dab_model.criterion.weight_dict.items() if not k[-1].isdigit()}
    assert {k: v for k, v in ks_model.criterion.weight_dict.items() if not k[-1].isdigit()} == base
    # the baseline supervises its decoder layers 0 .. L-2 as auxiliary outputs
    L = dab_model.transformer.decoder.num_layers
    assert {int(k.rsplit("_", 1)[1]) for k in dab_model.criterion.weight_dict if k[-1].isdigit()} == set(range(L - 1))


def test_one_training_step_and_one_eval_forward(ks_cfg):
    torch.manual_seed(0)
    model = instantiate(ks_cfg.model)
    num_layers = ks_cfg.model.transformer.decoder.num_layers
    num_classes = ks_cfg.model.num_classes

    model.train()
    ks_cfg.optimizer.params.model = model
    optimizer = instantiate(ks_cfg.optimizer)
    losses = model(_inputs(True, num_classes))
    assert set(losses) == set(ks_cfg.model.criterion.weight_dict)
    assert all(math.isfinite(float(v.detach())) for v in losses.values())
    before = model.backbone.stem.conv1.weight.detach().clone()
    optimizer.zero_grad()
    sum(losses.values()).backward()
    smlp_grad = model.ksgt.smlp_module.token_split_conv.linear[0].weight.grad
    assert smlp_grad is not None and smlp_grad.abs().sum() > 0  # the teachers are trained
    optimizer.step()
    assert not torch.equal(before, model.backbone.stem.conv1.weight)  # random-init backbone trains
    assert f"loss_class_{num_layers}" in losses  # teacher 1's decoder pass

    model.eval()
    with torch.no_grad():
        outputs = model(_inputs(False, num_classes))  # no ground truth needed at test time
    assert len(outputs) == 2
    for out, (h, w) in zip(outputs, ((128, 150), (140, 128))):
        inst = out["instances"]
        assert inst.image_size == (h, w)
        assert 0 < len(inst) <= ks_cfg.model.select_box_nums_for_evaluation
        assert inst.pred_classes.max() < num_classes
        boxes = inst.pred_boxes.tensor
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all() and (boxes >= 0).all()
