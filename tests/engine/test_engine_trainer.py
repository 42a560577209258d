"""Trainer (AMP, clipping, non-finite loss), hooks order, EMA and trainer state round trip (CPU)."""
import random

import numpy as np
import pytest
import torch
from fvcore.common.param_scheduler import MultiStepParamScheduler
from torch import nn

from detrex.engine import HookBase, SimpleTrainer, Trainer, hooks
from detrex.engine.ema import EMAState, EMAUpdater
from detrex.utils.events import EventStorage
from detrex.utils.testing import InMemoryTrainLoader, TinyRegressionDataset, TinyRegressor


def _setup(lr=0.1, **kwargs):
    torch.manual_seed(0)
    model = TinyRegressor()
    loader = InMemoryTrainLoader(TinyRegressionDataset(32), total_batch_size=8, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return model, Trainer(model, loader, opt, **kwargs)


class _Recorder(HookBase):
    def __init__(self, name, log):
        self.name, self.log = name, log

    def before_train(self):
        self.log.append((self.name, "before_train", self.trainer.iter))

    def after_step(self):
        self.log.append((self.name, "after_step", self.trainer.iter))

    def after_train(self):
        self.log.append((self.name, "after_train", self.trainer.iter))


def test_hooks_run_in_order_and_iter_is_max_after_training():
    _, trainer = _setup()
    log = []
    trainer.register_hooks([_Recorder("a", log), None, _Recorder("b", log)])
    trainer.train(0, 2)
    assert log == [("a", "before_train", 0), ("b", "before_train", 0),
                   ("a", "after_step", 0), ("b", "after_step", 0),
                   ("a", "after_step", 1), ("b", "after_step", 1),
                   ("a", "after_train", 2), ("b", "after_train", 2)]


def test_training_reduces_loss_and_logs_metrics():
    _, trainer = _setup(lr=0.05)
    trainer.register_hooks([hooks.IterationTimer()])
    trainer.train(0, 30)
    hist = trainer.storage.history("total_loss").values()
    assert len(hist) == 30
    assert np.mean([v for v, _ in hist[-5:]]) < np.mean([v for v, _ in hist[:5]])
    assert "loss_mse" in trainer.storage.histories() and "data_time" in trainer.storage.histories()


def test_bf16_autocast_on_cpu():
    model, trainer = _setup(amp=True, amp_dtype="bfloat16", device="cpu")
    seen = []
    model.head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    assert trainer.grad_scaler is None  # no scaler for bf16
    trainer.train(0, 3)
    assert seen == [torch.bfloat16] * 3
    assert all(np.isfinite(v) for v, _ in trainer.storage.history("total_loss").values())
    with pytest.raises(ValueError, match="train.amp.dtype"):
        Trainer(model, trainer.data_loader, trainer.optimizer, amp=True, amp_dtype="int8")


def test_gradient_clipping_bounds_the_update():
    model, trainer = _setup(lr=1.0, clip_grad_params={"max_norm": 1e-3, "norm_type": 2})
    before = [p.detach().clone() for p in model.parameters()]
    with EventStorage(0) as trainer.storage:
        trainer.iter = 0
        trainer.run_step()
    delta = torch.sqrt(sum(((p.detach() - b) ** 2).sum()
                           for p, b in zip(model.parameters(), before)))
    # SGD step = lr * clipped grad, so the total update norm is at most max_norm
    assert 0 < delta.item() <= 1e-3 + 1e-6


class _NaNModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, batch):
        return {"loss_good": self.w.sum(), "loss_bad": self.w.sum() * float("nan")}


def test_non_finite_loss_raises_naming_keys_and_iteration():
    model = _NaNModel()
    loader = InMemoryTrainLoader(TinyRegressionDataset(8), total_batch_size=2)
    trainer = Trainer(model, loader, torch.optim.SGD(model.parameters(), lr=1.0))
    with pytest.raises(FloatingPointError) as e:
        trainer.train(4, 6)
    assert "loss_bad" in str(e.value) and "iteration=4" in str(e.value)
    assert torch.equal(model.w.detach(), torch.ones(1))  # no optimizer step taken


def test_state_dict_round_trip_restores_optimizer_rng_and_data_position():
    model, trainer = _setup(lr=0.01)
    trainer.optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    trainer.train(0, 3)
    state = trainer.state_dict()
    assert state["iteration"] == 3 and state["data_loader"] == {"position": 3}
    expected = (random.random(), np.random.rand(), torch.rand(1))
    # scramble, then restore
    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    model2, trainer2 = _setup(lr=0.01)
    trainer2.optimizer = torch.optim.AdamW(model2.parameters(), lr=0.01)
    trainer2.load_state_dict(state)
    assert trainer2.iter == 3 and trainer2.data_loader.position == 3
    assert trainer2.optimizer.state_dict()["state"][0]["step"] == 3
    got = (random.random(), np.random.rand(), torch.rand(1))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_lr_scheduler_hook_logs_lr_and_resumes_curve():
    model, trainer = _setup(lr=1.0)
    trainer.register_hooks(
        [hooks.LRScheduler(scheduler=MultiStepParamScheduler(values=[1.0, 0.1], milestones=[2, 4]))]
    )
    trainer.train(0, 4)
    lrs = [v for v, _ in trainer.storage.history("lr").values()]
    assert lrs == pytest.approx([1.0, 1.0, 0.1, 0.1])
    # a trainer restored at iteration 2 (as after --resume) starts at lr 0.1
    model2, trainer2 = _setup(lr=1.0)
    for g in trainer2.optimizer.param_groups:
        g["initial_lr"] = 1.0
    trainer2.register_hooks(
        [hooks.LRScheduler(scheduler=MultiStepParamScheduler(values=[1.0, 0.1], milestones=[2, 4]))]
    )
    trainer2.train(2, 4)
    assert [v for v, _ in trainer2.storage.history("lr").values()] == pytest.approx([0.1, 0.1])


def test_eval_hook_periods_and_flattening():
    _, trainer = _setup()
    calls = []

    def fn():
        calls.append(trainer.iter)
        return {"bbox": {"AP": 1.0 + len(calls)}}

    trainer.register_hooks([hooks.EvalHook(2, fn)])
    trainer.train(0, 4)
    # after iteration 1 (period), not at the last iteration, then once after training
    assert calls == [1, 4]
    assert trainer.storage.latest()["bbox/AP"] == (3.0, 4)
    _, trainer = _setup()
    trainer.register_hooks([hooks.EvalHook(1, lambda: {"x": "nan-string"})])
    with pytest.raises(ValueError, match="nested dict of float"):
        trainer.train(0, 2)


def test_ema_update_and_swap():
    model = nn.Linear(2, 1)
    state = EMAState.from_model(model)
    updater = EMAUpdater(state, decay=0.5)
    w0 = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(2.0)
    updater.update(model)
    assert torch.allclose(state.state["weight"], w0 + 1.0)
    with state.apply_and_restore(model):
        assert torch.allclose(model.weight, w0 + 1.0)
    assert torch.allclose(model.weight, w0 + 2.0)


def test_simple_trainer_rejects_non_loss_output():
    model = nn.Linear(2, 2)
    loader = InMemoryTrainLoader(TinyRegressionDataset(8), total_batch_size=2)

    class _Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(1))

        def forward(self, batch):
            return [1, 2]

    bad = _Bad()
    trainer = SimpleTrainer(bad, loader, torch.optim.SGD(bad.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="loss"):
        trainer.train(0, 1)
    del model


def test_trainer_state_has_no_omegaconf_objects(tmp_path):
    from omegaconf import OmegaConf

    model = TinyRegressor()
    betas = OmegaConf.create([0.9, 0.99])  # as a lazy config would pass them
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt.param_groups[0]["betas_like"] = betas
    loader = InMemoryTrainLoader(TinyRegressionDataset(8), total_batch_size=2)
    trainer = Trainer(model, loader, opt)
    trainer.train(0, 1)
    torch.save({"trainer": trainer.state_dict()}, tmp_path / "t.pth")
    loaded = torch.load(tmp_path / "t.pth", weights_only=True)
    assert loaded["trainer"]["optimizer"]["param_groups"][0]["betas_like"] == [0.9, 0.99]
