"""End-to-end tests of tools/train_net.py on CPU with a tiny MLP and an in-memory dataset.

The config is tests/tools/configs/tiny_regressor.py: 6 iterations, checkpoints every 3,
evaluation every 3, log every iteration. The data loader draws the batch of step p from a
generator seeded by p and checkpoints its position, so resumed and multi-process runs see the
same global batches as one uninterrupted process.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "tests" / "tools" / "configs" / "tiny_regressor.py"
TRAIN_NET = REPO / "tools" / "train_net.py"



def _run(args, cwd, timeout=120):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, str(TRAIN_NET), "--config-file", str(CONFIG)] + list(args)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def _metrics(out_dir):
    return [json.loads(x) for x in (Path(out_dir) / "metrics.json").read_text().splitlines()]


def _by_iter(metrics, key):
    return {m["iteration"]: m[key] for m in metrics if key in m}


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """One uninterrupted 6-iteration run."""
    root = tmp_path_factory.mktemp("baseline")
    out = root / "out"
    log = _run([f"train.output_dir={out}"], cwd=root)
    return out, log


@pytest.mark.slow
def test_train_writes_all_outputs(baseline):
    out, log = baseline
    for name in ("log.txt", "metrics.json", "config.yaml", "model_final.pth", "last_checkpoint",
                 "model_0000002.pth", "model_0000005.pth"):
        assert (out / name).is_file(), name
    assert list(out.glob("events.out.tfevents.*"))
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    m = _metrics(out)
    assert sorted(_by_iter(m, "total_loss")) == list(range(6))
    assert {"loss_mse", "loss_l1", "lr", "data_time"} <= set(m[0])
    assert "time" in m[-2]  # after the timer's warm-up iterations
    # evaluation every 3 iterations (after iteration 2) and after training (iteration 6)
    assert sorted(_by_iter(m, "regression/MSE")) == [2, 6]
    # console line with losses, lr, ETA and memory
    assert re.search(r"eta: \S+\s+iter: 5\s+total_loss: \S+\s+loss_mse: \S+.*lr: \S+\s+max_mem: \d+M",
                     log), log[-2000:]
    # the saved config round-trips (named lr_factor_func, no lambda -> no .pkl fallback)
    from detrex.config import LazyConfig
    from detrex.solver import backbone_lr_factor

    assert not (out / "config.yaml.pkl").exists()
    saved = LazyConfig.load(str(out / "config.yaml"))
    assert saved.optimizer.params.lr_factor_func is backbone_lr_factor
    assert saved.train.max_iter == 6 and saved.train.output_dir == str(out)
    text = (out / "log.txt").read_text()
    assert "Environment info" in text and "Starting training from iteration 0" in text
    ckpt = torch.load(out / "model_final.pth", weights_only=True)
    assert {"model", "trainer", "iteration"} <= set(ckpt)
    assert {"optimizer", "rng", "data_loader"} <= set(ckpt["trainer"])
    assert ckpt["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 6


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(baseline, tmp_path):
    out, _ = baseline
    # simulate a run that stopped right after the checkpoint at iteration 2
    resumed = tmp_path / "out"
    shutil.copytree(out, resumed)
    for name in ("model_0000005.pth", "model_final.pth", "metrics.json"):
        (resumed / name).unlink()
    for f in resumed.glob("events.out.tfevents.*"):
        f.unlink()
    (resumed / "last_checkpoint").write_text("model_0000002.pth")
    log = _run(["--resume", f"train.output_dir={resumed}"], cwd=tmp_path)
    assert "Starting training from iteration 3" in log
    base, new = _metrics(out), _metrics(resumed)
    assert sorted(_by_iter(new, "tiny/objective")) == [3, 4, 5]
    for key in ("tiny/objective", "lr"):  # per-iteration loss (unsmoothed) and lr
        b, n = _by_iter(base, key), _by_iter(new, key)
        for it in (3, 4, 5):
            assert n[it] == pytest.approx(b[it], rel=1e-6, abs=1e-7), (key, it)
    wb, wn = _weights(out / "model_final.pth"), _weights(resumed / "model_final.pth")
    for k in wb:
        torch.testing.assert_close(wn[k], wb[k], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_eval_only_loads_init_checkpoint(baseline, tmp_path):
    out, _ = baseline
    log = _run(["--eval-only", f"train.init_checkpoint={out / 'model_final.pth'}",
                f"train.output_dir={tmp_path / 'eval'}"], cwd=tmp_path)
    final_mse = _by_iter(_metrics(out), "regression/MSE")[6]
    got = re.search(r"'MSE': ([0-9.eE+-]+)", log)
    assert got, log[-2000:]
    assert float(got.group(1)) == pytest.approx(final_mse, rel=1e-6)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(baseline, tmp_path):
    out, _ = baseline
    ddp_out = tmp_path / "ddp"
    _run(["--num-gpus", "2", f"train.output_dir={ddp_out}"], cwd=tmp_path, timeout=180)
    assert (ddp_out / "log.txt.rank1").is_file()  # a second process ran
    b, d = _by_iter(_metrics(out), "total_loss"), _by_iter(_metrics(ddp_out), "total_loss")
    assert sorted(d) == list(range(6))
    for it in range(6):  # total_loss is averaged over ranks = the global-batch loss
        assert d[it] == pytest.approx(b[it], rel=1e-5)
    wb, wd = _weights(out / "model_final.pth"), _weights(ddp_out / "model_final.pth")
    for k in wb:
        torch.testing.assert_close(wd[k], wb[k], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_amp_bf16_trains_on_cpu_with_ema(baseline, tmp_path):
    out, _ = baseline
    amp_out = tmp_path / "amp"
    log = _run(["train.amp.enabled=True", "train.amp.dtype=bfloat16",
                "train.model_ema.enabled=True", "train.model_ema.decay=0.5",
                f"train.output_dir={amp_out}"], cwd=tmp_path)
    assert "Run evaluation with EMA" in log
    ckpt = torch.load(amp_out / "model_final.pth", weights_only=True)
    assert set(ckpt["ema_state"]) == set(ckpt["model"])
    # the EMA differs from the raw weights (it lags behind them)
    assert not torch.equal(ckpt["ema_state"]["head.weight"], ckpt["model"]["head.weight"])
    a, b = _by_iter(_metrics(amp_out), "tiny/objective"), _by_iter(_metrics(out), "tiny/objective")
    assert sorted(a) == list(range(6))
    assert all(torch.isfinite(torch.tensor(v)) for v in a.values())
    # bf16 changes the numbers a little (so autocast was active), not the trajectory
    assert any(a[i] != b[i] for i in range(6))
    for i in range(6):
        assert a[i] == pytest.approx(b[i], rel=0.05)


def _import_train_net():
    import importlib.util

    spec = importlib.util.spec_from_file_location("detrex_tools_train_net", TRAIN_NET)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_do_test_without_evaluator_returns_empty(caplog):
    train_net = _import_train_net()
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"train": {"model_ema": {"enabled": False}}})
    logger = __import__("logging").getLogger("detrex")
    old, logger.propagate = logger.propagate, False  # records reach caplog once, directly
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("WARNING", logger="detrex"):
            assert train_net.do_test(cfg, torch.nn.Linear(2, 2), eval_only=True) == {}
    finally:
        logger.removeHandler(caplog.handler)
        logger.propagate = old
    assert "no dataloader.test/dataloader.evaluator" in caplog.text


def test_cuda_request_falls_back_to_cpu(monkeypatch):
    train_net = _import_train_net()
    from omegaconf import OmegaConf

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = OmegaConf.create({"train": {"device": "cuda"}, "model": {"device": "cuda"}})
    msg = train_net.resolve_device(cfg)
    assert cfg.train.device == "cpu" and cfg.model.device == "cpu"
    assert "CUDA is not available" in msg
    cfg = OmegaConf.create({"train": {"device": "cpu"}})
    assert train_net.resolve_device(cfg) is None


def test_cuda_runs_pin_the_training_batches_unless_the_config_decides():
    from detrex.config import LazyConfig

    train_net = _import_train_net()
    cfg = LazyConfig.load(str(REPO / "projects/ks_detr/configs/ks_dab_detr/ks_dab_detr_shapes_demo.py"))
    train_net._pin_train_batches(cfg)  # the config says cpu
    assert "pin_memory" not in cfg.dataloader.train
    cfg.train.device = "cuda"
    train_net._pin_train_batches(cfg)
    assert cfg.dataloader.train.pin_memory is True
    cfg.dataloader.train.pin_memory = False  # a config's own choice stays
    train_net._pin_train_batches(cfg)
    assert cfg.dataloader.train.pin_memory is False
