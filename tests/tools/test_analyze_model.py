"""tools/analyze_model.py on the tiny KS-DAB-DETR and its baseline twin (CPU)."""
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KS_CFG = os.path.join(REPO, "tests", "tools", "configs", "tiny_ks_dab_detr_shapes.py")
BASE_CFG = os.path.join(REPO, "tests", "tools", "configs", "tiny_dab_detr_shapes.py")
C = 32  # embed dim of the tiny configs


def _run(cfg, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, "tools/analyze_model.py", "--config-file", cfg, "--input-size", "96", "128",
                        *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _totals(out):
    m = re.search(r"\[parameter\] \w+: ([\d,]+) parameters; student \(inference\) ([\d,]+); teacher-only ([\d,]+)", out)
    params = tuple(int(g.replace(",", "")) for g in m.groups())
    flops = int(re.search(r"\[flop\].*total [\d.]+ GFLOPs \(([\d,]+)\)", out).group(1).replace(",", ""))
    acts = int(re.search(r"\[activation\].*total [\d.]+ M activations \(([\d,]+)\)", out).group(1).replace(",", ""))
    return params, flops, acts


@pytest.mark.slow
def test_ks_split_and_flops_equal_baseline():
    ks = _run(KS_CFG, "--tasks", "parameter", "flop", "activation", "structure", "--max-depth", "2")
    base = _run(BASE_CFG, "--tasks", "parameter", "flop", "activation")
    (ks_total, ks_student, ks_teacher), ks_flops, ks_acts = _totals(ks)
    (b_total, b_student, b_teacher), b_flops, _ = _totals(base)
    # teacher-only: the sMLP (Linear C->C with bias) and the teacher rows q^t, k^t, v^t of the packed in_proj
    assert ks_teacher == (C * C + C) + 3 * (C * C + C)
    assert ks_total == ks_student + ks_teacher
    assert b_teacher == 0 and ks_student == b_total  # the inference model is the baseline
    # eval mode runs the student only: same FLOPs as the baseline
    assert ks_flops == b_flops > 0 and ks_acts > 0
    # tables: per-module rows with the split, and the structure dump
    row = re.search(r"\|\s+ksgt\s+\|\s+([\d.]+K)\s+\|\s+0\s+\|\s+([\d.]+K)\s+\|", ks)
    assert row and row.group(1) == row.group(2)
    assert re.search(r"\|\s+transformer\.encoder\s+\|", ks)
    assert "[structure] KSDABDETR" in ks and "KSTripleAttnEncoderLayer" in ks


@pytest.mark.slow
def test_missing_config_is_a_clear_error(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, "tools/analyze_model.py", "--config-file", str(tmp_path / "no.py")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Config file not found" in r.stderr and "Traceback" not in r.stderr
