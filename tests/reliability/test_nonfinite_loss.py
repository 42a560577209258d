"""Non-finite losses: detected at the step, reported with loss key, iteration and image ids, no bad
weights or checkpoints written; or skipped and counted with train.skip_nonfinite_loss."""
import itertools

import pytest
import torch

from reliability_utils import LOADER_CONFIG, by_iter, import_train_net, load_ckpt, metrics
from detrex.data.build import build_detection_train_loader
from detrex.engine import Trainer, hooks
from detrex.utils.testing import (
    InMemoryTrainLoader,
    TinyRegressionDataset,
    TinyRegressionMapper,
    TinyRegressor,
    tiny_regression_dicts,
)

NAN_ID = 5


def _first_iters_with(loader, image_id, n_iters):
    out = []
    for it, batch in enumerate(itertools.islice(iter(loader), n_iters)):
        if image_id in [d["image_id"] for d in batch]:
            out.append(it)
    return out


def _trainer(skip):
    torch.manual_seed(0)
    model = TinyRegressor()
    loader = InMemoryTrainLoader(TinyRegressionDataset(8, nan_ids=[NAN_ID]), total_batch_size=2, seed=1)
    return model, loader, Trainer(model, loader, torch.optim.SGD(model.parameters(), lr=0.1),
                                  skip_nonfinite_loss=skip)


def test_nonfinite_loss_error_names_keys_iteration_and_image_ids():
    ref = InMemoryTrainLoader(TinyRegressionDataset(8), total_batch_size=2, seed=1)
    bad_iter = _first_iters_with(ref, NAN_ID, 40)[0]
    batch_ids = ref._indices(bad_iter)
    model, _, trainer = _trainer(skip=False)
    before = None

    def remember(t):
        nonlocal before
        before = {k: v.clone() for k, v in model.state_dict().items()}

    trainer.register_hooks([hooks.CallbackHook(before_step=remember)])
    with pytest.raises(FloatingPointError) as e:
        trainer.train(0, 40)
    msg = str(e.value)
    assert "loss_mse" in msg and "loss_l1" in msg
    assert f"iteration={bad_iter}" in msg and f"image ids: {batch_ids}" in msg
    for k, v in model.state_dict().items():  # no optimizer step with the bad batch
        assert torch.equal(v, before[k]), k


def test_skip_nonfinite_loss_skips_and_counts():
    ref = InMemoryTrainLoader(TinyRegressionDataset(8), total_batch_size=2, seed=1)
    bad = _first_iters_with(ref, NAN_ID, 20)
    assert bad, "the fixture must draw the NaN sample"
    model, _, trainer = _trainer(skip=True)
    trainer.train(0, 20)
    assert trainer.num_nonfinite_skipped == len(bad)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    hist = trainer.storage.history("nonfinite_skipped").values()
    assert [it for _, it in hist] == bad and [v for v, _ in hist] == list(range(1, len(bad) + 1))
    assert trainer.state_dict()["num_nonfinite_skipped"] == len(bad)


def _loader_nan_iters(nan_id, n):
    loader = build_detection_train_loader(
        tiny_regression_dicts(32, seed=0), mapper=TinyRegressionMapper(noise=0.0), total_batch_size=8,
        seed=0, aspect_ratio_grouping=True)
    return _first_iters_with(loader, nan_id, n)


def test_train_net_stops_at_nan_keeps_last_good_checkpoint(tmp_path, capsys):
    nan_id = 13
    bad_iter = _loader_nan_iters(nan_id, 24)[0]
    assert bad_iter >= 2, "pick an id drawn after the first checkpoint"
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        import_train_net().cli(["--config-file", str(LOADER_CONFIG), f"train.output_dir={out}",
                                f"dataloader.train.dataset.nan_ids=[{nan_id}]", "train.eval_period=0"])
    stderr = capsys.readouterr().err
    assert e.value.code == 1, stderr[-3000:]
    err = stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert err[0].startswith("train_net.py: error: Non-finite loss loss_l1, loss_mse")
    assert f"iteration={bad_iter}" in err[0] and str(nan_id) in err[0].split("image ids:")[1]
    # checkpoints every 2 iterations: the last one is the last complete iteration before the NaN
    last_good = bad_iter - 1 if bad_iter % 2 == 0 else bad_iter - 2
    assert (out / "last_checkpoint").read_text() == f"model_{last_good:07d}.pth"
    assert not (out / "model_final.pth").exists()
    for f in out.glob("model_*.pth"):
        assert all(torch.isfinite(v).all() for v in load_ckpt(f)["model"].values()), f
    assert "Traceback" in (out / "log.txt").read_text()  # the details are in the log


def test_train_net_skip_nonfinite_loss_counts_in_metrics(tmp_path):
    nan_id = 13
    bad = _loader_nan_iters(nan_id, 12)
    out = tmp_path / "out"
    import_train_net().cli([
        "--config-file", str(LOADER_CONFIG), f"train.output_dir={out}",
        f"dataloader.train.dataset.nan_ids=[{nan_id}]", "train.skip_nonfinite_loss=True",
        "train.max_iter=12", "train.eval_period=0"])
    m = metrics(out)
    assert by_iter(m, "nonfinite_skipped") == {it: float(i + 1) for i, it in enumerate(bad)}
    assert all(torch.isfinite(v).all() for v in load_ckpt(out / "model_final.pth")["model"].values())
    assert "Skipping this batch" in (out / "log.txt").read_text()
