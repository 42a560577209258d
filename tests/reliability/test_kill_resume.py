"""Acceptance: SIGKILL a training run at random moments, resume each time, end with exactly the
metrics and weights of an uninterrupted run; no checkpoint file is ever truncated.

The kill points are drawn from a fixed RNG (reproducible in CI). Progress is detected by polling
metrics.json; checkpoints are written every 2 iterations, so kills land before, during and after
checkpoint writes. The config uses the real training loader (TrainingSampler, aspect-ratio grouping,
per-sample seeded noise) and EMA, so the sampler position and EMA state are part of what must be
restored; one of the restarts uses 2 DataLoader workers, which must not change the batches.
"""
import json
import random
import signal
import subprocess
import time

import pytest
import torch

from reliability_utils import (
    LOADER_CONFIG,
    STATE_KEYS,
    by_iter,
    command,
    env,
    load_ckpt,
    metrics,
    run,
)


def _max_logged_iter(out):
    try:
        lines = (out / "metrics.json").read_text().splitlines()
    except FileNotFoundError:
        return -1
    its = []
    for line in lines:
        try:
            its.append(json.loads(line)["iteration"])
        except (ValueError, KeyError):
            pass
    return max(its, default=-1)


def _assert_all_checkpoints_load(out):
    files = sorted(out.glob("model_*.pth"))
    for f in files:
        ckpt = load_ckpt(f)  # raises on a truncated file
        assert {"model", "trainer", "iteration"} <= set(ckpt), f
    named = (out / "last_checkpoint").read_text().strip() if (out / "last_checkpoint").exists() else None
    if named:
        assert (out / named).is_file(), f"last_checkpoint names a missing file {named}"
    return files


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_matches_uninterrupted(loader_baseline, tmp_path):
    rng = random.Random(20240611)
    out = tmp_path / "out"
    kill_after = sorted(rng.sample(range(2, 21), 3))  # iterations after which to kill
    common = [f"train.output_dir={out}", "model.step_sleep=0.04"]
    for k, target in enumerate(kill_after):
        extra = ["dataloader.train.num_workers=2"] if k == 1 else []
        proc = subprocess.Popen(command(LOADER_CONFIG, "--resume", *common, *extra), cwd=tmp_path,
                                env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while _max_logged_iter(out) < target:
            assert proc.poll() is None, f"run {k} ended before iteration {target}: {proc.stderr.read()[-2000:]}"
            assert time.time() < deadline, "no progress"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.06))  # land anywhere in the following iteration(s)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL, f"run {k} was not killed (rc {proc.returncode})"
        assert _assert_all_checkpoints_load(out), "no checkpoint yet"
    log = run(LOADER_CONFIG, "--resume", *common, cwd=tmp_path).stdout
    assert "Resuming from" in log

    _assert_all_checkpoints_load(out)
    base, new = metrics(loader_baseline), metrics(out)
    for key in STATE_KEYS:
        b, n = by_iter(base, key), by_iter(new, key)  # by_iter: no iteration twice
        assert sorted(n) == sorted(b), key
        for it in b:
            assert n[it] == pytest.approx(b[it], rel=1e-6, abs=1e-9), (key, it)
    assert [m["iteration"] for m in new] == [m["iteration"] for m in base]
    wb, wn = load_ckpt(loader_baseline / "model_final.pth"), load_ckpt(out / "model_final.pth")
    for name in wb["model"]:
        torch.testing.assert_close(wn["model"][name], wb["model"][name], rtol=0, atol=0)
    for name in wb["ema_state"]:
        torch.testing.assert_close(wn["ema_state"][name], wb["ema_state"][name], rtol=0, atol=0)
    for sb, sn in zip(wb["trainer"]["optimizer"]["state"].values(),
                      wn["trainer"]["optimizer"]["state"].values()):
        torch.testing.assert_close(sn["exp_avg_sq"], sb["exp_avg_sq"], rtol=0, atol=0)
    assert wn["trainer"]["data_loader"] == wb["trainer"]["data_loader"] == {"num_batches": 24, "seed": 0}
