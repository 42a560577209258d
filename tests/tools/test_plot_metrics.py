"""tools/plot_metrics.py: curves from metrics.json files, several runs overlaid."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write_run(path, factor, resume_dup=False, truncated=False):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "metrics.json"), "w") as f:
        for it in range(0, 100, 10):
            rec = {"iteration": it, "total_loss": factor * 10 / (1 + it), "loss_class": factor / (1 + it),
                   "loss_bbox": 0.5 * factor, "loss_class_0": 3.0, "lr": 1e-4 if it < 70 else 1e-5, "time": 0.1}
            if it in (40, 90):
                rec["bbox/AP"] = it / 2 / factor
            f.write(json.dumps(rec) + "\n")
        if resume_dup:  # a resumed run appends iteration 90 again: the later value wins
            f.write(json.dumps({"iteration": 90, "total_loss": 123.0}) + "\n")
        if truncated:
            f.write('{"iteration": 100, "total_lo')


def _load_tool():
    spec = importlib.util.spec_from_file_location("plot_metrics", os.path.join(REPO, "tools", "plot_metrics.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_load_metrics_keeps_latest_and_skips_cut_lines(tmp_path):
    tool = _load_tool()
    _write_run(tmp_path / "a", 1.0, resume_dup=True, truncated=True)
    m = tool.load_metrics(str(tmp_path / "a"))
    assert m["total_loss"][90] == 123.0 and 100 not in m["total_loss"]
    assert sorted(m["bbox/AP"]) == [40, 90]
    assert tool.default_keys([m]) == ["total_loss", "loss_bbox", "loss_class", "lr", "bbox/AP"]
    assert tool.run_labels(["/x/ks/run1", "/x/base/run1"]) == ["ks/run1", "base/run1"]


@pytest.mark.slow
def test_cli_overlays_runs(tmp_path):
    _write_run(tmp_path / "ks", 1.0)
    _write_run(tmp_path / "baseline", 1.5)
    out = tmp_path / "curves.png"
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, "tools/plot_metrics.py", str(tmp_path / "ks"), str(tmp_path / "baseline"),
                        "--output", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    img = np.asarray(Image.open(out).convert("RGB"))
    # 5 panels in a 3-column grid of 5.2 x 3.6 inch panels at 100 dpi
    assert img.shape[:2] == (720, 1560)
    assert img.astype(np.float32).var() > 0
    # both runs are drawn: matplotlib's first two cycle colours (blue, orange) appear
    for colour in ((31, 119, 180), (255, 127, 14)):
        assert (np.abs(img.astype(int) - colour).sum(-1) < 30).sum() > 100
    r = subprocess.run([sys.executable, "tools/plot_metrics.py", str(tmp_path / "missing")], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no metrics.json" in r.stderr
