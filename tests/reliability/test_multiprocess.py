"""Two gloo processes on CPU (``--num-gpus 2``): training and evaluation identical to one process at
the same global batch, results written once by rank 0; a peer that dies or hangs makes the run exit
with an error (one line) instead of hanging."""
import subprocess
import time

import pytest
import torch

from reliability_utils import LOADER_CONFIG, by_iter, command, env, load_ckpt, metrics, run


@pytest.mark.slow
def test_two_processes_train_and_evaluate_like_one(loader_baseline, tmp_path):
    out = tmp_path / "ddp"
    run(LOADER_CONFIG, "--num-gpus", 2, f"train.output_dir={out}", cwd=tmp_path, timeout=240)
    assert (out / "log.txt.rank1").is_file()  # a second process trained
    base, ddp = metrics(loader_baseline), metrics(out)
    # losses are averaged over ranks = the loss of the global batch; tiny/objective is rank 0's half
    for key in ("total_loss", "loss_mse", "loss_l1", "lr", "regression/MSE"):
        b, d = by_iter(base, key), by_iter(ddp, key)  # by_iter: each iteration written once
        assert sorted(d) == sorted(b), key
        for it in b:
            assert d[it] == pytest.approx(b[it], rel=1e-5, abs=1e-7), (key, it)
    assert sorted(by_iter(ddp, "regression/MSE")) == [7, 15, 24]  # periodic + final evaluation
    assert "copypaste" in (out / "log.txt").read_text()
    assert "copypaste" not in (out / "log.txt.rank1").read_text()  # gathered to rank 0 only
    wb, wd = load_ckpt(loader_baseline / "model_final.pth"), load_ckpt(out / "model_final.pth")
    for k in wb["model"]:
        torch.testing.assert_close(wd["model"][k], wb["model"][k], rtol=1e-5, atol=1e-6)
    assert len(wd["trainer"]["rng_per_rank"]) == 2  # each rank's RNG state, for exact resume


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["exit", "hang"])
def test_peer_that_dies_or_hangs_makes_the_run_fail(tmp_path, fault):
    timeout = 8
    start = time.time()
    proc = subprocess.run(
        command(LOADER_CONFIG, "--num-gpus", 2, f"train.output_dir={tmp_path / 'out'}",
                "model.exit_at_iter=3", "model.exit_rank=1", f"model.fault={fault}"),
        cwd=tmp_path, env=env(DETREX_DIST_TIMEOUT=timeout), capture_output=True, text=True, timeout=240)
    elapsed = time.time() - start
    assert proc.returncode != 0, proc.stderr[-2000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith("train_net.py: error:")]
    assert lines and "[rank 0] a collective failed" in lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert elapsed < 200  # (includes two interpreter start-ups on a loaded CI machine)
    # the run stopped at the fault: no checkpoint after it, the last one is intact
    assert (tmp_path / "out" / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (tmp_path / "out" / "model_final.pth").exists()


def test_collective_timeout_from_environment(monkeypatch):
    from datetime import timedelta

    from detrex.engine.launch import DEFAULT_TIMEOUT, get_timeout

    monkeypatch.delenv("DETREX_DIST_TIMEOUT", raising=False)
    assert get_timeout() == DEFAULT_TIMEOUT == timedelta(minutes=30)
    monkeypatch.setenv("DETREX_DIST_TIMEOUT", "12.5")
    assert get_timeout() == timedelta(seconds=12.5)
    monkeypatch.setenv("DETREX_DIST_TIMEOUT", "soon")
    with pytest.raises(ValueError, match=r"\$DETREX_DIST_TIMEOUT='soon'"):
        get_timeout()
