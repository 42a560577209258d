"""The trainer reads the device once per log period: losses kept on the device and recorded under their own
iteration, the non-finite check done by the fused optimizer (found_inf) and reported at the read, one host sync
per detector training step (the matching transfer)."""
import itertools
import os
import sys

import pytest
import torch

from detrex.engine import Trainer, hooks
from detrex.utils.events import EventStorage
from detrex.utils.op_count import OpCounter
from detrex.utils.testing import InMemoryTrainLoader, TinyRegressionDataset, TinyRegressor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAN_ID = 5


def fused_adamw(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)


def trainer(period, skip=False, nan_ids=(), clip=None, optimizer=fused_adamw):
    torch.manual_seed(0)
    model = TinyRegressor()
    loader = InMemoryTrainLoader(TinyRegressionDataset(8, nan_ids=nan_ids), total_batch_size=2, seed=1)
    return model, Trainer(model, loader, optimizer(model), gather_metric_period=period, skip_nonfinite_loss=skip,
                          clip_grad_params=clip)


def nan_iters(n_iters):
    ref = InMemoryTrainLoader(TinyRegressionDataset(8), total_batch_size=2, seed=1)
    return [it for it, batch in enumerate(itertools.islice(iter(ref), n_iters))
            if NAN_ID in [d["image_id"] for d in batch]], ref


def history(trainer, key):
    return [(it, v) for v, it in trainer.storage.history(key).values()]


def test_deferred_read_records_every_iteration_as_a_per_iteration_read():
    _, every = trainer(period=1)
    every.train(0, 12)
    _, deferred = trainer(period=5)
    deferred.train(0, 12)  # 12 is not a multiple of 5: the last two are read at the end of training
    for key in ("total_loss", "loss_mse", "loss_l1", "data_time"):
        a, b = history(every, key), history(deferred, key)
        assert [it for it, _ in a] == [it for it, _ in b] == list(range(12)), key
        if key != "data_time":
            assert [v for _, v in a] == [v for _, v in b], key


def test_fused_optimizer_skips_a_nonfinite_step_on_the_device_and_the_read_reports_it():
    bad, ref = nan_iters(40)
    bad_iter = bad[0]
    model, t = trainer(period=4, nan_ids=[NAN_ID])
    assert t._device_guarded()
    snapshots = {}

    def before(tr):
        if tr.iter == bad_iter:
            snapshots["before"] = {k: v.clone() for k, v in model.state_dict().items()}

    def after(tr):
        if tr.iter == bad_iter:
            snapshots["after"] = {k: v.clone() for k, v in model.state_dict().items()}

    t.register_hooks([hooks.CallbackHook(before_step=before, after_step=after)])
    with pytest.raises(FloatingPointError) as e:
        t.train(0, 40)
    msg = str(e.value)
    assert "loss_mse" in msg and f"iteration={bad_iter}" in msg and f"image ids: {ref._indices(bad_iter)}" in msg
    for k in snapshots["before"]:  # the optimizer kernel skipped the bad step
        assert torch.equal(snapshots["before"][k], snapshots["after"][k]), k
    assert t.iter < (bad_iter // 4 + 1) * 4  # raised at the first read after the bad iteration


def test_fused_skip_nonfinite_counts_at_the_read():
    bad, _ = nan_iters(20)
    model, t = trainer(period=3, skip=True, nan_ids=[NAN_ID], clip={"max_norm": 0.1, "norm_type": 2})
    t.train(0, 20)
    assert t.num_nonfinite_skipped == len(bad) > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert [(it, v) for it, v in history(t, "nonfinite_skipped")] == [(it, i + 1) for i, it in enumerate(bad)]
    assert not set(bad) & {it for it, _ in history(t, "total_loss")}


def test_non_fused_optimizer_checks_on_the_host():
    _, t = trainer(period=4, optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.1))
    assert not t._device_guarded()


def _tiny_ks_dab():
    from detrex.config import LazyConfig, instantiate

    cfg = LazyConfig.load(os.path.join(ROOT, "tests/tools/configs/tiny_ks_dab_detr_shapes.py"))
    torch.manual_seed(0)
    return instantiate(cfg.model).train()


def test_a_detector_step_reads_the_device_once_and_a_log_step_twice():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from op_count import make_batch

    model = _tiny_ks_dab()
    batch = make_batch(2, 64, 96, 4, num_classes=3)
    t = Trainer(model, itertools.repeat(batch), torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True),
                clip_grad_params={"max_norm": 0.1, "norm_type": 2}, gather_metric_period=3)
    syncs = []
    with EventStorage(0) as t.storage:
        for it in range(6):
            t.iter = t.storage.iter = it
            with OpCounter() as counter:
                t.run_step()
            syncs.append((counter.total("syncs"), sum(n for (_, op), n in counter.by_op.items()
                                                      if op == "_local_scalar_dense")))
    # iterations 2 and 5 are log iterations (period 3); the first one creates the optimizer state
    assert syncs[1:] == [(1, 0), (2, 0), (1, 0), (1, 0), (2, 0)]


class _OrderedLosses(torch.nn.Module):
    """Returns a LossDict whose log order (b, a) differs from its vector order (a, b)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, data):
        from detrex.modeling.criterion import LossDict

        return LossDict(["loss_a", "loss_b"], self.w * torch.tensor([1.0, 3.0]), order=[1, 0])


def test_loss_dict_values_are_logged_under_their_own_keys_in_dict_order():
    model = _OrderedLosses()
    loader = InMemoryTrainLoader(TinyRegressionDataset(8), total_batch_size=2, seed=1)
    t = Trainer(model, loader, torch.optim.SGD(model.parameters(), lr=0.0), gather_metric_period=2)
    t.train(0, 2)
    assert [v for v, _ in t.storage.history("loss_a").values()] == [1.0, 1.0]
    assert [v for v, _ in t.storage.history("loss_b").values()] == [3.0, 3.0]
    keys = [k for k in t.storage.histories() if k.startswith("loss_")]
    assert keys == ["loss_b", "loss_a"]
