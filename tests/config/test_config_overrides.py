"""LazyConfig.apply_overrides: value parsing, key checking and type checking."""

import pytest
from omegaconf import DictConfig, ListConfig

from detrex.config import ConfigKeyError, LazyConfig, OverrideError, OverrideTypeError


@pytest.fixture
def cfg(configs_dir):
    return LazyConfig.load(str(configs_dir / "top.py"))


def apply(cfg, *overrides):
    return LazyConfig.apply_overrides(cfg, list(overrides))


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("train.max_iter=5", "max_iter", 5),
        ("train.lr=0.5", "lr", 0.5),
        ("train.lr=1e-4", "lr", 0.0001),
        ("train.lr=2.5E-3", "lr", 0.0025),
        ("train.milestones=None", "milestones", None),
        ("train.milestones=null", "milestones", None),
        ("train.amp.enabled=True", "amp.enabled", True),
        ("train.amp.enabled=true", "amp.enabled", True),
        ("train.amp.enabled=false", "amp.enabled", False),
        ("train.output_dir='/data/run 1'", "output_dir", "/data/run 1"),
        ('train.output_dir="quoted"', "output_dir", "quoted"),
        ("train.output_dir=/data/run1", "output_dir", "/data/run1"),
        ("train.device=cpu", "device", "cpu"),
        ("train.init_checkpoint=", "init_checkpoint", ""),
        ("train.seed=-3", "seed", -3),
        ("train.max_iter=1e5", "max_iter", 100000),  # integral float for an int key becomes an int
    ],
)
def test_scalar_values(cfg, override, key, expected):
    apply(cfg, override)
    value = cfg.train
    for part in key.split("."):
        value = value[part]
    assert value == expected
    assert type(value) is type(expected)


def test_list_tuple_and_dict_values(cfg):
    apply(cfg, "train.lst=[4, 5]")
    assert isinstance(cfg.train.lst, ListConfig) and list(cfg.train.lst) == [4, 5]
    apply(cfg, "train.lst=(6,7)")
    assert list(cfg.train.lst) == [6, 7]
    apply(cfg, "train.lst=[res4,res5]")  # hydra-style unquoted strings
    assert list(cfg.train.lst) == ["res4", "res5"]
    apply(cfg, "train.milestones=[10, 20]")  # None may be replaced by anything
    assert list(cfg.train.milestones) == [10, 20]
    # dict values are merged into the existing node (detectron2 semantics)
    apply(cfg, "train.amp={'enabled': True}", "train.amp={precision: bf16}")
    assert cfg.train.amp == {"enabled": True, "precision": "bf16"}


def test_list_item(cfg):
    apply(cfg, "train.lst.0=9")
    assert list(cfg.train.lst) == [9, 2, 3]
    with pytest.raises(ConfigKeyError, match="has no item 7"):
        apply(cfg, "train.lst.7=1")


def test_int_to_float_allowed_and_interpolation_follows(cfg):
    apply(cfg, "train.max_iter=2.5", "train.lr=3")
    assert cfg.train.max_iter == 2.5 and cfg.train.lr == 3
    assert cfg.optimizer.lr == 3  # "${train.lr}" follows the override


def test_typo_is_rejected_with_suggestion(cfg):
    with pytest.raises(ConfigKeyError) as info:
        apply(cfg, "train.max_ite=5")
    assert isinstance(info.value, KeyError)
    msg = str(info.value)
    assert "'train.max_ite' does not exist" in msg
    assert "Did you mean: 'train.max_iter'" in msg
    assert "+train.max_ite=5" in msg
    assert "max_ite" not in cfg.train  # nothing was created


def test_typo_in_a_parent_key(cfg):
    with pytest.raises(ConfigKeyError, match="Did you mean: 'train.amp.enabled'"):
        apply(cfg, "trian.amp.enabled=True")


def test_plus_adds_new_keys(cfg):
    apply(cfg, "+new.key=1", "+train.extra=[1, 2]")
    assert cfg.new.key == 1
    assert list(cfg.train.extra) == [1, 2]
    with pytest.raises(OverrideError, match="already exists"):
        apply(cfg, "+train.max_iter=3")
    apply(cfg, "++train.max_iter=3", "++other=x")
    assert cfg.train.max_iter == 3 and cfg.other == "x"


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("train.max_iter=abc", ["'train.max_iter'", "an int (200)", "'abc'", "a str"]),
        ("train.amp.enabled=1", ["'train.amp.enabled'", "a bool (False)", "1 is an int", "True or False"]),
        ("train.name=5", ["'train.name'", "a str ('run')", "train.name='5'"]),
        ("train.lst=3", ["'train.lst'", "a list ([1, 2, 3])", "3 is an int"]),
        ("train.amp=3", ["'train.amp'", "a dict"]),
    ],
)
def test_type_mismatch(configs_dir, override, fragments):
    cfg = LazyConfig.load(str(configs_dir / "mid" / "derived.py"))
    with pytest.raises(OverrideTypeError) as info:
        apply(cfg, override)
    assert isinstance(info.value, TypeError)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_none_can_replace_anything(cfg):
    apply(cfg, "train.max_iter=None", "train.amp=null")
    assert cfg.train.max_iter is None and cfg.train.amp is None


def test_update_through_a_leaf_is_rejected(cfg):
    with pytest.raises(ConfigKeyError, match="'train.max_iter' holds a value"):
        apply(cfg, "train.max_iter.x=1")
    with pytest.raises(ConfigKeyError, match="'train.max_iter' holds a value"):
        apply(cfg, "+train.max_iter.x=1")


@pytest.mark.parametrize(
    "override, exc, fragment",
    [
        ("x=a=b", OverrideError, "more than one '='"),
        ("train.max_iter", OverrideError, "has no '='"),
        ("train.lst=[1,2", OverrideError, "cannot parse value"),
        ("train..lr=1", OverrideError, "not a valid key"),
        ("train.lst={1, 2}", OverrideError, "set values are not supported"),
        ("train.output_dir='abc", OverrideError, "unbalanced quotes"),
        ("~train.lr", NotImplementedError, "deleting keys"),
    ],
)
def test_malformed_overrides(cfg, override, exc, fragment):
    with pytest.raises(exc) as info:
        apply(cfg, override)
    assert fragment in str(info.value)


def test_quoted_equals_sign_is_allowed(cfg):
    apply(cfg, "train.output_dir='/runs/lr=0.1'")
    assert cfg.train.output_dir == "/runs/lr=0.1"


def test_interpolation_value_is_kept(cfg):
    apply(cfg, "train.output_dir=${train.name}/eval")
    assert cfg.train.output_dir == "top/eval"


def test_returns_cfg_and_accepts_a_single_string(cfg):
    out = LazyConfig.apply_overrides(cfg, "train.max_iter=9")
    assert out is cfg and cfg.train.max_iter == 9
    assert isinstance(out, DictConfig)


def test_names_may_switch_between_str_and_list():
    cfg = DictConfig({"dataset": {"names": "coco_2017_val", "other": ["a", "b"]}})
    apply(cfg, "dataset.names=[coco_2017_val,custom_val]", "dataset.other=c")
    assert list(cfg.dataset.names) == ["coco_2017_val", "custom_val"]
    assert cfg.dataset.other == "c"


def test_interpolations_are_overridable_but_not_traversable():
    cfg = DictConfig({"train": {"device": "cuda"}, "model": {"device": "${train.device}", "sub": "${train}"}})
    apply(cfg, "train.device=cpu")
    assert cfg.model.device == "cpu"  # follows the override
    apply(cfg, "model.device=cuda:1")  # replacing the interpolation itself is allowed
    assert cfg.model.device == "cuda:1" and cfg.train.device == "cpu"
    with pytest.raises(ConfigKeyError, match="'model.sub' is an interpolation"):
        apply(cfg, "model.sub.device=x")
