"""Shared config pieces: ``detrex.config.recipes.with_aux_loss_weights``, ``common/criterion/focal_set_criterion.py``.

Also checks that the model configs built from them hold plain values at the key paths users override
(``model.criterion.weight_dict.loss_class``) and that no helper name leaks into a loaded tree.
"""

from collections import abc
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from detrex.config import LazyConfig, get_config, instantiate
from detrex.config.recipes import with_aux_loss_weights

REPO = Path(__file__).resolve().parents[2]
BASE = {"loss_class": 1, "loss_bbox": 5.0, "loss_giou": 2.0}


# ------------------------------------------------------------------------------------ with_aux_loss_weights
def test_aux_weights_order_and_values():
    out = with_aux_loss_weights(BASE, num_aux=2)
    assert list(out.items()) == [
        ("loss_class", 1),
        ("loss_bbox", 5.0),
        ("loss_giou", 2.0),
        ("loss_class_0", 1),
        ("loss_bbox_0", 5.0),
        ("loss_giou_0", 2.0),
        ("loss_class_1", 1),
        ("loss_bbox_1", 5.0),
        ("loss_giou_1", 2.0),
    ]
    assert type(out["loss_class_1"]) is int  # values pass through unchanged
    assert BASE == {"loss_class": 1, "loss_bbox": 5.0, "loss_giou": 2.0}  # input not modified


def test_aux_weights_enc_copy_comes_last():
    out = with_aux_loss_weights({"loss_class": 2.0}, num_aux=1, enc=True)
    assert list(out) == ["loss_class", "loss_class_0", "loss_class_enc"]


def test_aux_weights_zero_aux_sets_keeps_only_the_base():
    assert with_aux_loss_weights(BASE, num_aux=0) == BASE


def test_aux_weights_replace_existing_copies():
    # a weight dict that already has copies for 5 decoder layers, re-made for 2 (e.g. a smaller demo model)
    six_layers = with_aux_loss_weights({"loss_class": 1.0, "loss_class_dn": 1.0}, num_aux=5, enc=True)
    out = with_aux_loss_weights(six_layers, num_aux=2)
    assert list(out) == [
        "loss_class",
        "loss_class_dn",
        "loss_class_0",
        "loss_class_dn_0",
        "loss_class_1",
        "loss_class_dn_1",
    ]


def test_aux_weights_accept_a_dictconfig_and_return_a_plain_dict():
    cfg = OmegaConf.create({"weight_dict": dict(BASE)})
    out = with_aux_loss_weights(cfg.weight_dict, num_aux=1)
    assert type(out) is dict
    assert out == {**BASE, "loss_class_0": 1, "loss_bbox_0": 5.0, "loss_giou_0": 2.0}


@pytest.mark.parametrize(
    "weights, num_aux, error, words",
    [
        ([("loss_class", 1.0)], 1, TypeError, "weight_dict must be a mapping"),
        (BASE, 2.0, TypeError, "num_aux must be an int"),
        (BASE, True, TypeError, "num_aux must be an int"),
        (BASE, -1, ValueError, "num_aux must be >= 0"),
        ({"loss_class_0": 1.0, "loss_bbox_enc": 5.0}, 1, ValueError, "no base loss key"),
    ],
)
def test_aux_weights_bad_input_names_the_problem(weights, num_aux, error, words):
    with pytest.raises(error, match=words):
        with_aux_loss_weights(weights, num_aux=num_aux)


# ---------------------------------------------------------------------------------- focal criterion fragment
def test_focal_set_criterion_fragment_values():
    criterion = get_config("common/criterion/focal_set_criterion.py").criterion
    assert criterion._target_.__name__ == "SetCriterion"
    assert criterion.num_classes == 80
    assert dict(criterion.weight_dict) == {"loss_class": 1, "loss_bbox": 5.0, "loss_giou": 2.0}
    assert (criterion.loss_class_type, criterion.alpha, criterion.gamma) == ("focal_loss", 0.25, 2.0)
    m = criterion.matcher
    assert m._target_.__name__ == "HungarianMatcher"
    assert (m.cost_class, m.cost_bbox, m.cost_giou) == (2.0, 5.0, 2.0)
    assert (m.cost_class_type, m.alpha, m.gamma) == ("focal_loss_cost", 0.25, 2.0)


def test_focal_set_criterion_fragment_instantiates_and_is_a_fresh_copy():
    first = get_config("common/criterion/focal_set_criterion.py").criterion
    first.weight_dict.loss_class = 2.0  # a model config's override must not leak into the next get_config
    second = get_config("common/criterion/focal_set_criterion.py").criterion
    assert second.weight_dict.loss_class == 1
    module = instantiate(second)
    assert module.weight_dict == {"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    assert module.losses == ["class", "boxes"]


# ------------------------------------------------------------------------------- model configs built from them
def _model(rel):
    return LazyConfig.load(str(REPO / rel)).model


def _keys(base, sets):
    return [f"{k}{s}" for s in sets for k in base]


MATCHING = ["loss_class", "loss_bbox", "loss_giou"]
DN = MATCHING + ["loss_class_dn", "loss_bbox_dn", "loss_giou_dn"]


@pytest.mark.parametrize(
    "rel, criterion, base, sets, loss_class",
    [
        (
            "projects/conditional_detr/configs/models/conditional_detr_r50.py",
            "SetCriterion",
            MATCHING,
            ["", "_0", "_1", "_2", "_3", "_4"],
            2.0,
        ),
        (
            "projects/dab_detr/configs/models/dab_detr_r50.py",
            "SetCriterion",
            MATCHING,
            ["", "_0", "_1", "_2", "_3", "_4"],
            1,
        ),
        (
            "projects/deformable_detr/configs/models/deformable_detr_r50.py",
            "DeformableCriterion",
            MATCHING,
            ["", "_0", "_1", "_2", "_3", "_4", "_enc"],
            1.0,
        ),
        ("projects/dn_detr/configs/models/dn_detr_r50.py", "DNCriterion", DN, ["", "_0", "_1", "_2", "_3", "_4"], 1),
        (
            "projects/ks_detr/configs/ks_dab_detr/models/ks_dab_detr_r50_smlp_qkv_triple_attn.py",
            "SetCriterion",
            MATCHING,
            ["", "_0", "_1", "_2", "_3", "_4", "_5", "_6"],
            1,
        ),
        (
            "projects/ks_detr/configs/ks_deformable_detr/models/ks_deformable_detr_r50_smlp_qkv_triple_attn.py",
            "DeformableCriterion",
            MATCHING,
            ["", "_0", "_1", "_2", "_3", "_4", "_5", "_6", "_enc"],
            1.0,
        ),
    ],
)
def test_model_config_weight_dicts(rel, criterion, base, sets, loss_class):
    model = _model(rel)
    assert model.criterion._target_.__name__ == criterion
    weights = model.criterion.weight_dict
    assert list(weights) == _keys(base, sets)
    assert weights.loss_class == loss_class and type(weights.loss_class) is type(loss_class)
    assert all(weights[k] == 5.0 for k in weights if k.startswith("loss_bbox"))
    assert all(weights[k] == 2.0 for k in weights if k.startswith("loss_giou"))


def test_weight_override_key_path_still_works():
    cfg = LazyConfig.load(str(REPO / "projects/dab_detr/configs/dab_detr_r50_50ep.py"))
    LazyConfig.apply_overrides(cfg, ["model.criterion.weight_dict.loss_class=3.0"])
    assert cfg.model.criterion.weight_dict.loss_class == 3.0
    assert cfg.model.criterion.weight_dict.loss_class_0 == 1  # copies are plain values, set at load time


def _values(node):
    if isinstance(node, abc.Mapping):
        for v in node.values():
            yield from _values(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            yield from _values(v)
    else:
        yield node


@pytest.mark.parametrize(
    "rel",
    [
        "projects/deformable_detr/configs/deformable_detr_shapes_demo.py",
        "projects/ks_detr/configs/ks_dn_detr/models/ks_dn_detr_r50_smlp_qkv_triple_attn.py",
    ],
)
def test_no_helper_in_loaded_tree(rel):
    cfg = LazyConfig.load(str(REPO / rel))
    tree = OmegaConf.to_container(cfg, resolve=True)
    for value in _values(tree):
        assert getattr(value, "__module__", "") != "detrex.config.recipes", (rel, value)
        assert "recipes" not in str(value), (rel, value)


# ---------------------------------------------------------------------------------- shapes-demo recipe fragment
def test_shapes_demo_recipe_schedule_and_settings():
    recipe = get_config("common/shapes_demo_recipe.py")
    scheduler = instantiate(recipe.lr_multiplier)
    assert scheduler(0.0) == pytest.approx(0.01)  # warm-up starts at 0.01x
    assert scheduler(0.5) == pytest.approx(1.0)
    assert scheduler(0.84) == pytest.approx(1.0)
    assert scheduler(0.86) == pytest.approx(0.1)  # x0.1 for the last 15%
    assert (recipe.train.device, recipe.train.seed, recipe.train.init_checkpoint) == ("cpu", 42, "")
    assert recipe.train.clip_grad.enabled and recipe.train.clip_grad.params.max_norm == 0.1
    assert (recipe.optimizer.weight_decay, recipe.dataloader.train.total_batch_size) == (1e-4, 8)


def test_shapes_demo_evaluator_follows_the_demos_output_dir():
    for rel, out in [
        ("projects/dab_detr/configs/dab_detr_shapes_demo.py", "./output/dab_detr_shapes_demo"),
        ("projects/deformable_detr/configs/deformable_detr_shapes_demo.py", "./output/deformable_detr_shapes_demo"),
    ]:
        cfg = LazyConfig.load(str(REPO / rel))
        assert cfg.dataloader.evaluator.output_dir == out
        LazyConfig.apply_overrides(cfg, ["train.output_dir=/elsewhere"])
        assert cfg.dataloader.evaluator.output_dir == "/elsewhere"
