"""Shared helpers for the reliability tests (run tools/train_net.py, read metrics, load checkpoints)."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TRAIN_NET = REPO / "tools" / "train_net.py"
CONFIGS = REPO / "tests" / "tools" / "configs"
LOADER_CONFIG = CONFIGS / "tiny_regressor_loader.py"
TINY_CONFIG = CONFIGS / "tiny_regressor.py"


def env(**extra):
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    e["PYTHONUNBUFFERED"] = "1"
    e.pop("DETREX_DEBUG", None)
    e.update({k: str(v) for k, v in extra.items()})
    return e


def command(config, *args):
    return [sys.executable, str(TRAIN_NET), "--config-file", str(config)] + [str(a) for a in args]


def run(config, *args, cwd, timeout=180, check=True, **extra_env):
    proc = subprocess.run(command(config, *args), cwd=cwd, env=env(**extra_env),
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def metrics(out_dir):
    return [json.loads(x) for x in (Path(out_dir) / "metrics.json").read_text().splitlines()]


def by_iter(rows, key):
    out = {}
    for m in rows:
        if key in m:
            assert m["iteration"] not in out, f"iteration {m['iteration']} has two '{key}' lines"
            out[m["iteration"]] = m[key]
    return out


def import_train_net():
    spec = importlib.util.spec_from_file_location("detrex_tools_train_net_rel", TRAIN_NET)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# scalars that are functions of the training state (not of wall-clock time)
STATE_KEYS = ("total_loss", "loss_mse", "loss_l1", "tiny/objective", "lr", "regression/MSE")
