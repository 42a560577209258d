"""tools/ks_study.py: the statistics helpers on hand-made numbers, and a tiny 2-arm x 2-seed study end to end
(tiny KS-DAB-DETR / DAB-DETR from tests/tools/configs on a 16-image shapes set generated under tmp_path)."""
import csv
import importlib.util
import json
import math
import os
import shutil
import statistics
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def _load_tool():
    spec = importlib.util.spec_from_file_location("ks_study_under_test", REPO / "tools" / "ks_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ks_study = _load_tool()


# ------------------------------------------------------------------------------------------------- statistics
def test_paired_difference_matches_hand_computed_t_interval():
    ks = [31.0, 29.5, 33.2]
    base = [30.0, 29.0, 31.0]
    d = [1.0, 0.5, 2.2]
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    t_crit = 4.302652729911275  # Student t, 97.5 % quantile, 2 degrees of freedom (table value)
    half = t_crit * sd / math.sqrt(3)
    out = ks_study.paired_difference(ks, base)
    assert out["n"] == 3
    assert out["mean"] == pytest.approx(1.2333333333, abs=1e-9)
    assert out["sd"] == pytest.approx(statistics.stdev(d), rel=1e-12)
    assert out["ci_low"] == pytest.approx(mean - half, rel=1e-9)
    assert out["ci_high"] == pytest.approx(mean + half, rel=1e-9)
    assert out["t"] == pytest.approx(mean / (sd / math.sqrt(3)), rel=1e-9)
    # |t| = 2.4457 with 2 df: two-sided p between 0.10 (t = 2.920) and 0.20 (t = 1.886)
    assert 0.10 < out["p"] < 0.20


def test_paired_difference_drops_incomplete_pairs_and_needs_two():
    out = ks_study.paired_difference([1.0, float("nan"), 3.0], [0.0, 5.0, 1.0])
    assert out["n"] == 2 and out["mean"] == pytest.approx(1.5)
    # two pairs, differences 1 and 2: sd = 0.7071, t(0.975, 1 df) = 12.7062
    assert out["ci_high"] - out["mean"] == pytest.approx(12.706204736 * math.sqrt(0.5) / math.sqrt(2), rel=1e-6)
    one = ks_study.paired_difference([2.0], [1.0])
    assert one["n"] == 1 and one["mean"] == 1.0 and math.isnan(one["ci_low"]) and math.isnan(one["p"])
    with pytest.raises(ValueError, match="equal lengths"):
        ks_study.paired_difference([1.0, 2.0], [1.0])


def test_summarize_uses_sample_sd_and_ignores_nan():
    s = ks_study.summarize([2.0, 4.0, float("nan"), 9.0])
    assert s["n"] == 3 and s["mean"] == pytest.approx(5.0)
    assert s["sd"] == pytest.approx(math.sqrt(((2 - 5) ** 2 + (4 - 5) ** 2 + (9 - 5) ** 2) / 2))
    assert math.isnan(ks_study.summarize([1.0])["sd"])


def test_final_metrics_takes_last_evaluation(tmp_path):
    lines = [{"iteration": 4, "loss": 1.0}, {"iteration": 5, "bbox/AP": 1.5, "bbox/AP50": 3.0},
             {"iteration": 9, "bbox/AP": 2.5, "bbox/AP50": 6.0, "bbox/APs": 1.0}]
    (tmp_path / "metrics.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    curves = ks_study.read_eval_curves(str(tmp_path))
    assert curves["AP"] == {5: 1.5, 9: 2.5}
    it, final = ks_study.final_metrics(curves)
    assert it == 9 and final["AP"] == 2.5 and final["AP50"] == 6.0 and final["APs"] == 1.0
    assert math.isnan(final["APl"])
    assert not ks_study.run_is_finished(str(tmp_path), 10)  # no model_final.pth


# ------------------------------------------------------------------------------------------------- end to end
_CONFIG = """
from detrex.config import LazyConfig, get_config
from detrex.data import DatasetCatalog
from detrex.data.datasets.shapes import register_shapes

_base = LazyConfig.load({base!r})
model, dataloader, train = _base.model, _base.dataloader, _base.train
for _name, _split in (("ks_study_tiny_train", "train"), ("ks_study_tiny_val", "val")):
    if _name not in DatasetCatalog:
        register_shapes(_name, _split, num_train=16, num_val=6)
dataloader.train.dataset.names = "ks_study_tiny_train"
dataloader.test.dataset.names = "ks_study_tiny_val"
dataloader.train.total_batch_size = 2
optimizer = get_config("common/optim.py").AdamW
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_50ep
train.log_period = 1
"""


@pytest.mark.slow
def test_tiny_study_runs_resumes_and_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("DETREX_CACHE", str(tmp_path / "cache"))
    configs = {}
    for arm, base in (("ks", "tiny_ks_dab_detr_shapes.py"), ("base", "tiny_dab_detr_shapes.py")):
        configs[arm] = tmp_path / f"study_{arm}.py"
        configs[arm].write_text(_CONFIG.format(base=str(REPO / "tests" / "tools" / "configs" / base)))
    out, report = tmp_path / "study", tmp_path / "report"
    argv = ["--ks-config", str(configs["ks"]), "--baseline-config", str(configs["base"]), "--seeds", "0", "1",
            "--max-iter", "4", "--eval-period", "2", "--output-dir", str(out), "--report-dir", str(report),
            "--jobs", "2", "--threads", "1", "--eval-teachers", "--names", "KS", "BASE", "optimizer.lr=2e-4"]
    assert ks_study.main(argv) == 0

    for arm in ("ks", "baseline"):
        for seed in (0, 1):
            run = out / "runs" / arm / f"seed{seed}"
            assert (run / "model_final.pth").is_file()
            cfg_text = (run / "config.yaml").read_text()
            assert f"seed: {seed}" in cfg_text and "max_iter: 4" in cfg_text and "lr: 0.0002" in cfg_text
            # same seed -> same data order: the train loader's sampler was seeded with the run's seed
            state = torch.load(run / "model_final.pth", map_location="cpu", weights_only=False)
            assert state["trainer"]["data_loader"] == {"num_batches": 4, "seed": seed}
    with open(report / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["arm"], r["seed"]) for r in rows) == [("BASE", "0"), ("BASE", "1"), ("KS", "0"), ("KS", "1")]
    assert all(math.isfinite(float(r["AP"])) and int(r["iteration"]) >= 3 for r in rows)
    with open(report / "summary.csv") as f:
        summary = {r["metric"]: r for r in csv.DictReader(f)}
    ap = {(r["arm"], r["seed"]): float(r["AP"]) for r in rows}
    diffs = [ap[("KS", s)] - ap[("BASE", s)] for s in ("0", "1")]
    assert float(summary["AP"]["diff_mean"]) == pytest.approx(sum(diffs) / 2, abs=1e-3)
    assert int(summary["AP"]["n_pairs"]) == 2
    with open(report / "curves.csv") as f:
        curve_rows = list(csv.DictReader(f))
    assert len(curve_rows) == 8  # 4 runs x evaluations at iterations 2 and 4
    png = (report / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    md = (report / "report.md").read_text()
    assert "Paired difference KS − BASE" in md and "teacher1 (share V)" in md and "teacher2 (share A)" in md

    # teachers: evaluated with GT; the GT pass's student equals the ordinary GT-free evaluation
    for seed in (0, 1):
        res = json.loads((out / "runs" / "ks" / f"seed{seed}" / "teachers.json").read_text())["results"]
        assert set(res) == {"student (no GT)", "student (GT pass)", "teacher1 (share V)", "teacher2 (share A)"}
        assert res["student (GT pass)"]["AP"] == pytest.approx(res["student (no GT)"]["AP"], abs=1e-9)
        assert res["student (no GT)"]["AP"] == pytest.approx(ap[("KS", str(seed))], abs=1e-3)

    # resumable: everything is finished, so a rerun trains nothing and leaves the weights alone
    final = out / "runs" / "ks" / "seed0" / "model_final.pth"
    mtime = final.stat().st_mtime_ns
    start = time.time()
    assert ks_study.main(argv) == 0
    assert final.stat().st_mtime_ns == mtime and time.time() - start < 30
    # other settings into the same folder are refused
    assert argv[7] == "--max-iter"
    assert ks_study.main([*argv[:8], "8", *argv[9:]]) == 2

    # compute-matched: the baseline gets its own iterations; finished KS runs copied in are reused, not retrained
    matched = tmp_path / "matched"
    shutil.copytree(out / "runs" / "ks" / "seed0", matched / "runs" / "ks" / "seed0")
    ks_final = matched / "runs" / "ks" / "seed0" / "model_final.pth"
    ks_mtime = ks_final.stat().st_mtime_ns
    argv_m = ["--ks-config", str(configs["ks"]), "--baseline-config", str(configs["base"]), "--seeds", "0",
              "--max-iter", "4", "--baseline-max-iter", "6", "--eval-period", "2", "--output-dir", str(matched),
              "--jobs", "1", "--threads", "1", "--names", "KS", "BASE", "optimizer.lr=2e-4"]
    assert ks_study.main(argv_m) == 0
    assert ks_final.stat().st_mtime_ns == ks_mtime
    assert "max_iter: 6" in (matched / "runs" / "baseline" / "seed0" / "config.yaml").read_text()
    assert json.loads((matched / "study.json").read_text())["baseline_max_iter"] == 6
    with open(matched / "runs.csv") as f:
        iters = {r["arm"]: int(r["iteration"]) for r in csv.DictReader(f)}
    assert iters == {"KS": 4, "BASE": 6}  # the last evaluation of each arm (numbered as in metrics.json)
    assert "4 iterations for KS, 6 for BASE" in (matched / "report.md").read_text()
