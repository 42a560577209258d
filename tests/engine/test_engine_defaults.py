"""default_argument_parser, default_setup, default_writers, launch helpers (single process)."""
import random

import numpy as np
import pytest
import torch

from detrex.config import LazyConfig
from detrex.engine import default_argument_parser, default_setup, default_writers, launch
from detrex.engine.launch import find_free_port, is_torchrun
from detrex.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter

_CFG = """
train = dict(output_dir="{out}", seed=5, max_iter=3, device="cpu")
"""


def test_argument_parser_flags_and_opts():
    args = default_argument_parser().parse_args(
        ["--config-file", "a.py", "--resume", "--eval-only", "--num-gpus", "2",
         "--num-machines", "3", "--machine-rank", "1", "--dist-url", "tcp://h:1",
         "train.max_iter=5", "model.x=[1,2]"]
    )
    assert args.config_file == "a.py" and args.resume and args.eval_only
    assert (args.num_gpus, args.num_machines, args.machine_rank) == (2, 3, 1)
    assert args.dist_url == "tcp://h:1"
    assert args.opts == ["train.max_iter=5", "model.x=[1,2]"]
    d = default_argument_parser().parse_args([])
    assert d.dist_url == "auto" and d.num_gpus == 1 and d.opts == [] and not d.resume


def _cfg(tmp_path, out):
    f = tmp_path / "cfg.py"
    f.write_text(_CFG.format(out=out))
    return f, LazyConfig.load(str(f))


def test_default_setup_writes_outputs_and_seeds(tmp_path):
    out = tmp_path / "run"
    f, cfg = _cfg(tmp_path, out)
    args = default_argument_parser().parse_args(["--config-file", str(f)])
    default_setup(cfg, args)
    assert (out / "config.yaml").is_file()
    assert LazyConfig.load(str(out / "config.yaml")).train.seed == 5
    log = (out / "log.txt").read_text()
    assert "Environment info" in log and "PyTorch" in log and "torchvision" in log
    assert 'output_dir="' in log  # the config file text
    assert "Command line arguments" in log
    # seeded with train.seed + rank = 5
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    assert a == (random.random(), np.random.rand(), torch.rand(1).item())


def test_unwritable_output_dir_is_a_clear_error(tmp_path):
    # a path below a regular file cannot be created, even as root
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    f, cfg = _cfg(tmp_path, blocker / "run")
    args = default_argument_parser().parse_args(["--config-file", str(f)])
    with pytest.raises(PermissionError, match="train.output_dir") as e:
        default_setup(cfg, args)
    assert str(blocker / "run") in str(e.value)


def test_default_writers(tmp_path):
    writers = default_writers(str(tmp_path), max_iter=10)
    assert [type(w) for w in writers] == [CommonMetricPrinter, JSONWriter, TensorboardXWriter]
    for w in writers:
        w.close()


def test_launch_single_process_calls_directly():
    seen = []
    launch(lambda x: seen.append(x), 1, args=(3,))
    assert seen == [3]


def test_launch_auto_url_rejects_multi_machine():
    with pytest.raises(ValueError, match="single machine"):
        launch(print, 2, num_machines=2, dist_url="auto", backend="gloo")


def test_free_port_and_torchrun_detection(monkeypatch):
    port = find_free_port()
    assert 0 < port < 65536
    for k in ("LOCAL_RANK", "WORLD_SIZE", "RANK", "MASTER_ADDR"):
        monkeypatch.delenv(k, raising=False)
    assert not is_torchrun()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert is_torchrun()
