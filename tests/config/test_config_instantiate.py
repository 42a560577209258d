"""LazyCall and instantiate: the detectron2 recursion rules."""

import dataclasses
import logging

import pytest
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from detrex.config import L, LazyCall, instantiate, locate


def record(**kwargs):
    """A target that returns what it received."""
    return kwargs


class Point:
    def __init__(self, x, y=0):
        self.x, self.y = x, y


@dataclasses.dataclass
class Size:
    h: int = 1
    w: int = 2


def test_lazycall_builds_a_config_node():
    node = L(Point)(x=1, y=[1, 2])
    assert isinstance(node, DictConfig)
    assert node._target_ is Point
    assert isinstance(node.y, ListConfig)
    assert node._get_flag("allow_objects") is True
    node.x = 5  # editable
    assert instantiate(node).x == 5
    assert LazyCall is L


def test_lazycall_target_validation():
    with pytest.raises(TypeError, match="must be a callable, a dotted name"):
        L(5)
    assert L("torch.nn.Identity")()._target_ == "torch.nn.Identity"
    assert isinstance(L(L(record)(a=1))(b=2)._target_, DictConfig)
    with pytest.raises(TypeError, match="keyword arguments only"):
        L(Point)(1)


def test_lazycall_builtin_containers_and_dataclasses():
    d = L(dict)(a=1, b=L(Point)(x=2))
    assert d._target_ == "builtins.dict"
    built = instantiate(d)
    assert type(built) is dict and built["a"] == 1 and built["b"].x == 2
    assert instantiate(L(list)()) == []
    s = L(Size)(h=3)
    assert s._target_.endswith("Size") and isinstance(s._target_, str)


def test_kwarg_types_reaching_the_callee():
    fn = lambda v: v  # noqa: E731
    out = instantiate(L(record)(t=(1, 2), l=[1, 2], d={"a": 1}, n=L(Point)(x=1), f=fn))
    assert isinstance(out["t"], ListConfig) and list(out["t"]) == [1, 2]
    assert isinstance(out["l"], ListConfig)
    assert isinstance(out["d"], DictConfig) and out["d"].a == 1
    assert isinstance(out["n"], Point)
    assert out["f"] is fn


def test_listconfig_becomes_new_listconfig_and_list_stays_list():
    lst = OmegaConf.create([L(Point)(x=1), 3], flags={"allow_objects": True})
    out = instantiate(lst)
    assert isinstance(out, ListConfig) and out is not lst
    assert isinstance(out[0], Point) and out[1] == 3
    plain = instantiate([L(Point)(x=2), "a"])
    assert type(plain) is list and isinstance(plain[0], Point) and plain[1] == "a"


def test_mapping_without_target_is_returned_unchanged():
    cfg = DictConfig({"a": L(Point)(x=1), "b": 2}, flags={"allow_objects": True})
    assert instantiate(cfg) is cfg
    assert isinstance(cfg.a, DictConfig)  # the nested lazy call was not built
    plain = {"a": L(Point)(x=1)}
    assert instantiate(plain) is plain
    # ... but inside a lazy call, a dict argument is passed as is (its lazy calls unbuilt)
    out = instantiate(L(record)(d={"p": L(Point)(x=1)}))
    assert isinstance(out["d"].p, DictConfig)


def test_nested_lazy_calls_and_string_targets():
    cfg = L(torch.nn.Sequential)()
    assert isinstance(instantiate(cfg), torch.nn.Sequential)
    layer = instantiate(L("torch.nn.Linear")(in_features=2, out_features=3))
    assert isinstance(layer, torch.nn.Linear) and layer.out_features == 3
    weight = torch.zeros(1, requires_grad=True)
    opt = instantiate(L("torch.optim.SGD")(params=[weight], lr=0.1))
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[0]["params"][0] is weight
    outer = instantiate(L(record)(inner=L(record)(deep=L(Point)(x=7))))
    assert outer["inner"]["deep"].x == 7


def test_structured_config_becomes_object():
    out = instantiate(OmegaConf.structured(Size(h=5)))
    assert isinstance(out, Size) and out.h == 5


def test_interpolations_resolve_at_instantiate_time():
    cfg = DictConfig(
        {"train": {"lr": 0.1}, "opt": L(record)(lr="${..train.lr}", abs_lr="${train.lr}")},
        flags={"allow_objects": True},
    )
    cfg.train.lr = 0.5
    out = instantiate(cfg.opt)
    assert out == {"lr": 0.5, "abs_lr": 0.5}


def test_non_config_objects_pass_through():
    module = torch.nn.Linear(1, 1)
    cfg = L(record)(m=None)
    cfg.m = module
    assert instantiate(cfg)["m"] is module
    assert instantiate(3) == 3


def test_constructor_type_error_is_logged_and_names_the_key(config_log):
    cfg = DictConfig({"model": {"head": L(torch.nn.Linear)(in_features=2)}}, flags={"allow_objects": True})
    with pytest.raises(TypeError) as info:
        instantiate(cfg.model.head)
    assert "out_features" in str(info.value)
    notes = getattr(info.value, "__notes__", [])
    assert any("torch.nn.Linear" in n and "'model.head'" in n for n in notes)
    assert any("Error when instantiating torch.nn.Linear" in m for m in config_log.messages(logging.ERROR))


def test_bad_targets():
    with pytest.raises(ImportError, match="'torch.nn.NoSuchLayer'"):
        instantiate(L("torch.nn.NoSuchLayer")())
    cfg = DictConfig({"x": {"_target_": 5}}, flags={"allow_objects": True})
    with pytest.raises(TypeError, match="'x'.*not callable"):
        instantiate(cfg.x)


def test_locate():
    assert locate("torch.nn.Linear") is torch.nn.Linear
    assert locate("torch.optim.sgd.SGD") is torch.optim.SGD
    with pytest.raises(ImportError, match="no_such_module_xyz"):
        locate("no_such_module_xyz.f")
