"""WarmupParamScheduler / LRMultiplier values and the configs/common/coco_schedule.py multipliers."""
import pytest
import torch
from fvcore.common.param_scheduler import CosineParamScheduler, MultiStepParamScheduler

from detrex.config import get_config, instantiate
from detrex.solver import LRMultiplier, WarmupParamScheduler


def test_linear_warmup_then_multistep():
    s = WarmupParamScheduler(
        MultiStepParamScheduler(values=[1.0, 0.1], milestones=[80, 100]),
        warmup_factor=0.001, warmup_length=0.1,
    )
    assert s(0.0) == pytest.approx(0.001)
    assert s(0.05) == pytest.approx(0.001 + (1.0 - 0.001) * 0.5)
    assert s(0.1) == pytest.approx(1.0)
    assert s(0.79) == pytest.approx(1.0)
    assert s(0.8) == pytest.approx(0.1)


def test_constant_warmup_and_zero_length():
    s = WarmupParamScheduler(CosineParamScheduler(1.0, 0.0), warmup_factor=0.5,
                             warmup_length=0.2, warmup_method="constant")
    assert s(0.1) == pytest.approx(0.5)
    assert s(0.5) == pytest.approx(0.5)  # cosine at half-way: (1 + cos(pi/2)) / 2
    s0 = WarmupParamScheduler(MultiStepParamScheduler(values=[1.0, 0.1], milestones=[8, 10]),
                              warmup_factor=0.001, warmup_length=0.0)
    assert s0(0.0) == pytest.approx(1.0)
    assert s0(0.8) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="warmup method"):
        WarmupParamScheduler(CosineParamScheduler(1.0, 0.0), 0.1, 0.1, warmup_method="exp")


def _opt(lrs):
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in lrs]
    return torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, lrs)], lr=1.0)


def test_lr_multiplier_per_group_and_resume():
    mult = MultiStepParamScheduler(values=[1.0, 0.1], milestones=[6, 10])
    opt = _opt([1.0, 0.1])
    sched = LRMultiplier(opt, mult, max_iter=10)
    seen = []
    for _ in range(10):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert seen[5] == pytest.approx([1.0, 0.1])
    assert seen[6] == pytest.approx([0.1, 0.01])
    assert sched.state_dict() == {"base_lrs": [1.0, 0.1], "last_epoch": 10}
    # resuming at iteration 7 (last finished: 6) continues the curve
    opt2 = _opt([1.0, 0.1])
    for g in opt2.param_groups:
        g["initial_lr"] = g["lr"]
    LRMultiplier(opt2, mult, max_iter=10, last_iter=6)
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx([0.1, 0.01])


def test_coco_schedule_configs():
    sched = get_config("common/coco_schedule.py")
    m50 = instantiate(sched.lr_multiplier_50ep)
    assert m50(0.0) == pytest.approx(1.0)
    assert m50(0.79) == pytest.approx(1.0) and m50(0.8) == pytest.approx(0.1)
    m12 = instantiate(sched.lr_multiplier_12ep)
    assert m12(10.9 / 12) == pytest.approx(1.0) and m12(11 / 12) == pytest.approx(0.1)
    m12w = instantiate(sched.lr_multiplier_12ep_warmup)
    # warm-up of 1e-3 epochs = 7.5 iterations of 90000
    assert m12w(0.0) == pytest.approx(0.001)
    assert m12w(8 / 90000) == pytest.approx(1.0)
    m1x = instantiate(sched.lr_multiplier_1x)
    assert m1x(0.0) == pytest.approx(0.001)
    assert m1x(1000 / 90000) == pytest.approx(1.0)
    assert m1x(60000 / 90000) == pytest.approx(0.1)
    assert m1x(80000 / 90000) == pytest.approx(0.01)
    m3x = instantiate(sched.lr_multiplier_3x)
    assert m3x(209999 / 270000) == pytest.approx(1.0)
    assert m3x(210000 / 270000) == pytest.approx(0.1)
    for name in ["lr_multiplier_2x", "lr_multiplier_6x", "lr_multiplier_9x",
                 "lr_multiplier_24ep", "lr_multiplier_36ep", "lr_multiplier_50ep_warmup"]:
        assert instantiate(sched[name])(0.5) > 0


def test_common_optim_and_train_configs():
    optim = get_config("common/optim.py")
    model = torch.nn.Linear(2, 2)
    optim.AdamW.params.model = model
    optim.AdamW.lr = 3e-4
    opt = instantiate(optim.AdamW)
    assert isinstance(opt, torch.optim.AdamW)
    assert all(g["lr"] == pytest.approx(3e-4) for g in opt.param_groups)  # ${..lr} interpolation
    optim.SGD.params.model = model
    assert isinstance(instantiate(optim.SGD), torch.optim.SGD)
    train = get_config("common/train.py").train
    assert train.device == "cuda" and train.amp.enabled is False
    assert train.clip_grad.params.max_norm == 0.1 and train.model_ema.decay == 0.999
    assert train.checkpointer.period == 5000 and train.max_iter == 90000


def test_lr_multiplier_past_max_iter_is_a_clear_error():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=r"iteration 9 is past max_iter=5.*larger train.max_iter"):
        LRMultiplier(opt, MultiStepParamScheduler(values=[1.0, 0.1], milestones=[4, 5]), max_iter=5, last_iter=8)
