"""Resume edge cases of tools/train_net.py (tiny MLP config, 6 iterations, checkpoints every 3):

* a checkpoint past ``train.max_iter`` -> one line saying there is nothing to train, how to extend the
  schedule and ``--eval-only`` for metrics; exit code 0; nothing written;
* a larger ``train.max_iter`` -> training continues with the LR schedule stretched to the new length (the LR
  of the first resumed iteration is the multiplier at iteration / new max_iter), and the log says so;
* a checkpoint exactly at ``train.max_iter`` -> only the final evaluation runs.
"""
import json
import shutil

import pytest

from tests.reliability.reliability_utils import TINY_CONFIG, by_iter, metrics, run


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One uninterrupted 6-iteration run (lr 1e-2; warm-up over the first third from 0.1x, then 1x, 0.1x from
    iteration 4 of 6)."""
    root = tmp_path_factory.mktemp("finished")
    out = root / "out"
    run(TINY_CONFIG, f"train.output_dir={out}", cwd=root)
    return out


def _snapshot(out):
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir()}


@pytest.mark.slow
def test_checkpoint_past_max_iter_says_so_and_exits_0(finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    before = _snapshot(out)
    proc = run(TINY_CONFIG, "--resume", f"train.output_dir={out}", "train.max_iter=4", cwd=tmp_path)
    assert proc.returncode == 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "Nothing to train" in line]
    assert len(lines) == 1, proc.stdout[-3000:]
    line = lines[0]
    assert "has completed 6 iterations, more than train.max_iter=4" in line
    assert "train.max_iter > 6" in line and "--eval-only" in line and "model_final.pth" in line
    assert "Traceback" not in proc.stdout + proc.stderr and "where in ParamScheduler" not in proc.stdout + proc.stderr
    assert "Starting training" not in proc.stdout
    after = _snapshot(out)
    for name in ("model_final.pth", "metrics.json", "last_checkpoint", "model_0000005.pth"):
        assert after[name] == before[name], name  # nothing trained, evaluated or saved


@pytest.mark.slow
def test_larger_max_iter_stretches_the_schedule(finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    for name in ("model_0000005.pth", "model_final.pth"):
        (out / name).unlink()
    (out / "last_checkpoint").write_text("model_0000002.pth")  # 3 iterations done
    proc = run(TINY_CONFIG, "--resume", f"train.output_dir={out}", "train.max_iter=12",
               "train.checkpointer.period=100", "train.eval_period=100", cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert "Starting training from iteration 3" in log
    assert "the LR schedule is stretched to 12 iterations" in log
    # old schedule at 3/6 = 0.5: past the warm-up, 1.0x; new one at 3/12 = 0.25, inside the warm-up of length
    # 1/3 from 0.1x to 1.0x: 0.1 + 0.9 * 0.25 / (1/3) = 0.775
    assert "LR multiplier at iteration 3: 1 in the old schedule, 0.775 now" in log
    lr = by_iter(metrics(out), "lr")
    assert sorted(it for it in lr if it >= 3) == list(range(3, 12))
    base = 1e-3  # the logged group is the largest one: the MLP's "backbone" layers, lr factor 0.1
    assert lr[2] == pytest.approx(base, rel=1e-6)  # unchanged history: 1.0x at 2/6 (end of the warm-up)
    assert lr[3] == pytest.approx(base * 0.775, rel=1e-6)
    # 12 * 4/6 = 8: the 0.1x step moves from iteration 4 to iteration 8
    assert lr[7] == pytest.approx(base, rel=1e-6) and lr[8] == pytest.approx(base * 0.1, rel=1e-6)
    ckpt_state = __import__("torch").load(out / "model_final.pth", weights_only=True)["trainer"]
    assert ckpt_state["hooks"]["LRScheduler"]["max_iter"] == 12


@pytest.mark.slow
def test_checkpoint_at_max_iter_only_runs_the_final_evaluation(finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    proc = run(TINY_CONFIG, "--resume", f"train.output_dir={out}", cwd=tmp_path)
    assert "All 6 iterations of train.max_iter=6 are done: nothing to train" in proc.stdout
    rows = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    assert by_iter(rows, "regression/MSE").keys() == {2, 6}  # the final evaluation, once
