"""get_default_optimizer_params: norm weight decay, lr factors, overrides, group merging."""
import pytest
import torch
from torch import nn

from detrex.solver import (
    LRFactorByKeyword,
    backbone_lr_factor,
    get_default_optimizer_params,
    reduce_param_groups,
)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.neck = nn.GroupNorm(2, 4)
        self.head = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.weight.requires_grad_(False)
        self.frozen.bias.requires_grad_(False)


def _settings(groups):
    """param id -> (lr, weight_decay) as the optimizer would see them."""
    out = {}
    for g in groups:
        for p in g["params"]:
            assert id(p) not in out, "a parameter appears in two groups"
            out[id(p)] = (g.get("lr"), g.get("weight_decay"))
    return out


def test_norm_params_get_weight_decay_norm_and_backbone_factor():
    net = _Net()
    groups = get_default_optimizer_params(
        net, base_lr=1e-4, weight_decay=1e-4, weight_decay_norm=0.0,
        lr_factor_func=backbone_lr_factor,
    )
    s = _settings(groups)
    assert s[id(net.backbone[0].weight)] == (pytest.approx(1e-5), 1e-4)
    assert s[id(net.backbone[1].weight)] == (pytest.approx(1e-5), 0.0)  # BN in backbone
    assert s[id(net.backbone[1].bias)] == (pytest.approx(1e-5), 0.0)
    assert s[id(net.neck.weight)] == (1e-4, 0.0)  # GroupNorm
    assert s[id(net.head.weight)] == (1e-4, 1e-4)
    assert s[id(net.head.bias)] == (1e-4, 1e-4)
    # frozen parameters are skipped
    assert id(net.frozen.weight) not in s and id(net.frozen.bias) not in s
    # identical settings are merged: backbone-decay, backbone-norm, norm, default
    assert len(groups) == 4
    # the optimizer accepts the groups
    torch.optim.AdamW(groups, lr=1e-4)


def test_overrides_bias_and_keyword_factor():
    net = _Net()
    groups = get_default_optimizer_params(
        net, base_lr=1.0, weight_decay=0.5, weight_decay_bias=0.0, bias_lr_factor=2.0,
        lr_factor_func=LRFactorByKeyword(keywords=["head"], factor=0.3),
    )
    s = _settings(groups)
    # overrides replace the factor-scaled lr for biases (detectron2 order: factor, then overrides)
    assert s[id(net.head.bias)] == (2.0, 0.0)
    assert s[id(net.head.weight)] == (pytest.approx(0.3), 0.5)
    assert s[id(net.backbone[0].weight)] == (1.0, 0.5)


def test_lr_factor_requires_base_lr():
    with pytest.raises(ValueError, match="base_lr"):
        get_default_optimizer_params(_Net(), lr_factor_func=backbone_lr_factor)


def test_shared_parameter_counted_once():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    net[1].weight = net[0].weight
    groups = get_default_optimizer_params(net, base_lr=0.1)
    n = sum(len(g["params"]) for g in groups)
    assert n == 3  # shared weight + two biases


def test_reduce_param_groups_merges_and_later_wins():
    a, b, c = (nn.Parameter(torch.zeros(1)) for _ in range(3))
    groups = reduce_param_groups(
        [{"params": [a], "lr": 1.0}, {"params": [b], "lr": 1.0}, {"params": [c], "lr": 2.0},
         {"params": [a], "lr": 2.0}]
    )
    by_lr = {g["lr"]: {id(p) for p in g["params"]} for g in groups}
    assert by_lr == {1.0: {id(b)}, 2.0: {id(a), id(c)}}
