"""Bad input to tools/train_net.py: each case ends with ONE clear line on stderr naming the offending
thing, exit code 2 (configuration) or 1 (run time), and no traceback.

Most cases call ``train_net.cli(argv)`` in-process (fast); one runs the real command line.
"""
import pytest
import torch
from PIL import Image

from reliability_utils import LOADER_CONFIG, TINY_CONFIG, import_train_net, run
from detrex.config import LazyCall as L
from detrex.config import LazyConfig
from detrex.data import DatasetCatalog
from detrex.data.build import get_detection_dataset_dicts
from detrex.utils.testing import TinyRegressor


@pytest.fixture(scope="module")
def train_net():
    return import_train_net()


def _cli(train_net, capsys, *argv):
    with pytest.raises(SystemExit) as e:
        train_net.cli([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("train_net.py: error: "), err
    return e.value.code, lines[0]


def _tiny(tmp_path, *extra):
    return ["--config-file", TINY_CONFIG, f"train.output_dir={tmp_path / 'out'}", "train.max_iter=2",
            "train.eval_period=0", *extra]


def test_config_file_that_does_not_exist(train_net, capsys, tmp_path):
    code, msg = _cli(train_net, capsys, "--config-file", tmp_path / "nope.py")
    assert code == 2 and "nope.py" in msg and "does not exist" in msg


def test_override_key_that_does_not_exist(train_net, capsys, tmp_path):
    code, msg = _cli(train_net, capsys, *_tiny(tmp_path, "train.max_iters=5"))
    assert code == 2 and "train.max_iters" in msg and "max_iter" in msg.split("train.max_iters", 1)[1]


def test_override_with_wrong_value_type(train_net, capsys, tmp_path):
    code, msg = _cli(train_net, capsys, *_tiny(tmp_path, "train.max_iter=abc"))
    assert code == 2 and "train.max_iter" in msg and "abc" in msg


def test_init_checkpoint_that_does_not_exist(train_net, capsys, tmp_path):
    missing = tmp_path / "weights" / "missing.pth"
    code, msg = _cli(train_net, capsys, *_tiny(tmp_path, f"train.init_checkpoint={missing}"))
    assert code == 1 and str(missing) in msg and "not found" in msg


def test_truncated_init_checkpoint(train_net, capsys, tmp_path):
    path = tmp_path / "trunc.pth"
    torch.save({"model": TinyRegressor().state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    code, msg = _cli(train_net, capsys, *_tiny(tmp_path, f"train.init_checkpoint={path}"))
    assert code == 1 and str(path) in msg and "truncated" in msg


def test_init_checkpoint_of_another_architecture(train_net, capsys, tmp_path):
    path = tmp_path / "wide.pth"
    torch.save({"model": TinyRegressor(hidden_dim=32).state_dict()}, path)
    code, msg = _cli(train_net, capsys, *_tiny(tmp_path, f"train.init_checkpoint={path}"))
    assert code == 1 and str(path) in msg and "another architecture" in msg
    assert "backbone.0.weight (32, 4) in checkpoint vs (16, 4) in model" in msg
    assert "init_checkpoint_match=partial" in msg
    # the user may allow it: what fits is loaded, training runs
    train_net.cli([str(a) for a in _tiny(tmp_path, f"train.init_checkpoint={path}",
                                          "train.init_checkpoint_match=partial")])
    assert (tmp_path / "out" / "model_final.pth").is_file()


def test_backbone_only_checkpoint_loads_by_default_but_not_when_exact(train_net, capsys, tmp_path):
    # like ImageNet weights for a detector: the heads are missing from the checkpoint
    src = TinyRegressor()
    path = tmp_path / "backbone.pth"
    torch.save({k: v for k, v in src.state_dict().items() if k.startswith("backbone.")}, path)
    train_net.cli([str(a) for a in _tiny(tmp_path, f"train.init_checkpoint={path}", "train.max_iter=1")])
    capsys.readouterr()
    code, msg = _cli(train_net, capsys, *_tiny(tmp_path, f"train.init_checkpoint={path}",
                                                "train.init_checkpoint_match=exact"))
    assert code == 1 and "model keys not in the checkpoint (4): norm.weight, norm.bias, head.weight" in msg


def _with_cfg(train_net, monkeypatch, edit):
    def load_config(args):
        cfg = LazyConfig.load(str(LOADER_CONFIG))
        cfg = LazyConfig.apply_overrides(cfg, args.opts)
        edit(cfg)
        return cfg

    monkeypatch.setattr(train_net, "load_config", load_config)


def test_dataset_name_not_registered(train_net, capsys, monkeypatch, tmp_path):
    def edit(cfg):
        cfg.dataloader.train.dataset = L(get_detection_dataset_dicts)(names="shapez_train")

    _with_cfg(train_net, monkeypatch, edit)
    code, msg = _cli(train_net, capsys, "--config-file", LOADER_CONFIG, f"train.output_dir={tmp_path}")
    assert code == 1 and "'shapez_train'" in msg and "not registered" in msg
    assert "shapes_train" in msg.split("Available datasets are:")[1]  # lists registered names


def test_empty_dataset_after_filtering(train_net, capsys, monkeypatch, tmp_path):
    name = "reliability_only_crowd"
    DatasetCatalog.register(name, lambda: [
        {"file_name": "a.png", "image_id": 0, "width": 4, "height": 4,
         "annotations": [{"iscrowd": 1, "bbox": [0, 0, 1, 1], "bbox_mode": 1, "category_id": 0}]}])
    try:
        def edit(cfg):
            cfg.dataloader.train.dataset = L(get_detection_dataset_dicts)(names=name)

        _with_cfg(train_net, monkeypatch, edit)
        code, msg = _cli(train_net, capsys, "--config-file", LOADER_CONFIG, f"train.output_dir={tmp_path}")
    finally:
        DatasetCatalog.remove(name)
    assert code == 1 and name in msg and "filtered out" in msg


def _images(root, n=32, bad=(7,)):
    root.mkdir()
    for i in range(n):
        w, h = (20, 30) if i % 3 == 0 else (30, 20)
        Image.new("RGB", (w, h), (i, 2 * i, 3 * i)).save(root / f"{i}.png")
    for b in bad:
        (root / f"{b}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return [root / f"{b}.png" for b in bad]


def test_undecodable_image_fails_or_is_skipped_by_option(train_net, capsys, tmp_path):
    bad, = _images(tmp_path / "images")
    argv = ["--config-file", LOADER_CONFIG, f"train.output_dir={tmp_path / 'out'}", "train.max_iter=8",
            "train.eval_period=0", f"dataloader.train.dataset.image_root={tmp_path / 'images'}"]
    code, msg = _cli(train_net, capsys, *argv)
    assert code == 1 and str(bad) in msg
    # skip_bad_images=True: 8 iterations x 8 images = 2 epochs of the 32: the bad image is drawn twice, logged once
    train_net.cli([str(a) for a in argv + ["dataloader.train.skip_bad_images=True",
                                           f"train.output_dir={tmp_path / 'out2'}"]])
    log = (tmp_path / "out2" / "log.txt").read_text()
    lines = [x for x in log.splitlines() if "Skipped a bad training image" in x]
    assert len(lines) == 1 and str(bad) in lines[0] and "1 bad file(s) so far" in lines[0]
    final = torch.load(tmp_path / "out2" / "model_final.pth", weights_only=True)
    assert final["trainer"]["data_loader"]["bad_images"] == {"num_skips": 2, "files": {str(bad): 2}}
    from reliability_utils import by_iter, metrics

    skipped = by_iter(metrics(tmp_path / "out2"), "bad_images_skipped")
    assert sorted(set(skipped.values())) == [1, 2]  # the running count, in metrics.json


def test_too_many_bad_images_stop_the_run_with_one_line(train_net, capsys, tmp_path):
    bad = _images(tmp_path / "images", bad=(3, 7))  # 2 of 32: more than max(1, 1 % of 32) = 1
    argv = ["--config-file", LOADER_CONFIG, f"train.output_dir={tmp_path / 'out'}", "train.max_iter=8",
            "train.eval_period=0", f"dataloader.train.dataset.image_root={tmp_path / 'images'}",
            "dataloader.train.skip_bad_images=True"]
    code, msg = _cli(train_net, capsys, *argv)
    assert code == 1 and "2 distinct training images could not be used (of 32)" in msg
    assert "max_bad_image_fraction=0.01 allows (1)" in msg and all(str(b) in msg for b in bad)
    assert "tools/check_dataset.py" in msg
    # a larger allowance (10 % of 32 = 3 files) trains to the end
    train_net.cli([str(a) for a in argv + ["dataloader.train.max_bad_image_fraction=0.1",
                                           f"train.output_dir={tmp_path / 'out2'}"]])
    assert (tmp_path / "out2" / "model_final.pth").is_file()


def test_output_dir_not_writable(train_net, capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, msg = _cli(train_net, capsys, *_tiny(tmp_path), f"train.output_dir={blocker / 'run'}")
    assert code == 1 and str(blocker / "run") in msg and "writable" in msg


@pytest.mark.slow
def test_command_line_reports_one_line_and_exit_code(tmp_path):
    proc = run(TINY_CONFIG, "train.max_iter=abc", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "train.max_iter" in proc.stderr and "Traceback" not in proc.stderr
