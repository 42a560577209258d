"""setup_logger handlers, log_every_n_seconds, detectron2:// resolution through PathManager."""
import logging
import os

import pytest

from detrex.utils.file_io import PathManager, get_weights_dir
from detrex.utils.logger import log_every_n_seconds, setup_logger


def _flush(name):
    for h in logging.getLogger(name).handlers:
        h.flush()


def test_setup_logger_configures_detrex_projects_fvcore(tmp_path):
    setup_logger(str(tmp_path), distributed_rank=0, name="detrex", color=False)
    for name in ("detrex.engine.x", "projects.ks_detr.modeling", "fvcore.common.checkpoint"):
        logging.getLogger(name).info(f"hello from {name}")
    for name in ("detrex", "projects", "fvcore"):
        _flush(name)
    text = (tmp_path / "log.txt").read_text()
    for name in ("detrex.engine.x", "projects.ks_detr.modeling", "fvcore.common.checkpoint"):
        assert f"hello from {name}" in text
    # calling again adds no duplicate handlers
    n = len(logging.getLogger("detrex").handlers)
    setup_logger(str(tmp_path), distributed_rank=0, name="detrex", color=False)
    assert len(logging.getLogger("detrex").handlers) == n


def test_setup_logger_second_run_replaces_handlers(tmp_path, capsys):
    # two in-process runs (ks_study, tests): lines print once and go to the current run's file only
    run1, run2 = tmp_path / "run1", tmp_path / "run2"
    setup_logger(str(run1), name="detrex_test_rerun", color=False, extra_names=())
    setup_logger(str(run2), name="detrex_test_rerun", color=False, extra_names=())
    logging.getLogger("detrex_test_rerun").info("second run line")
    _flush("detrex_test_rerun")
    assert capsys.readouterr().out.count("second run line") == 1
    assert "second run line" in (run2 / "log.txt").read_text()
    assert "second run line" not in (run1 / "log.txt").read_text()


def test_setup_logger_rank_file(tmp_path):
    logger = setup_logger(str(tmp_path), distributed_rank=2, name="detrex_test_rank")
    logger.info("rank two")
    _flush("detrex_test_rank")
    assert "rank two" in (tmp_path / "log.txt.rank2").read_text()
    assert not (tmp_path / "log.txt").exists()
    # no stdout handler on ranks > 0
    import sys

    assert logger.handlers and all(h.stream is not sys.stdout for h in logger.handlers)


def test_log_every_n_seconds(caplog):
    logger = logging.getLogger("detrex_test_lens")
    old, logger.propagate = logger.propagate, False
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="detrex_test_lens"):
            for _ in range(3):
                log_every_n_seconds(logging.INFO, "tick", n=1000, name="detrex_test_lens")
    finally:
        logger.removeHandler(caplog.handler)
        logger.propagate = old
    assert [r.getMessage() for r in caplog.records].count("tick") == 1


def test_detectron2_prefix_uses_weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DETREX_WEIGHTS", str(tmp_path))
    assert get_weights_dir() == str(tmp_path)
    nested = tmp_path / "ImageNetPretrained" / "torchvision"
    nested.mkdir(parents=True)
    (nested / "R-50.pkl").write_bytes(b"x")
    got = PathManager.get_local_path("detectron2://ImageNetPretrained/torchvision/R-50.pkl")
    assert got == str(nested / "R-50.pkl")
    # basename fallback
    (tmp_path / "R-101.pkl").write_bytes(b"y")
    got = PathManager.get_local_path("detectron2://ImageNetPretrained/torchvision/R-101.pkl")
    assert got == str(tmp_path / "R-101.pkl")


def test_detectron2_prefix_missing_lists_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("DETREX_WEIGHTS", str(tmp_path / "w"))
    with pytest.raises(FileNotFoundError) as e:
        PathManager.get_local_path("detectron2://ImageNetPretrained/torchvision/R-50.pkl")
    msg = str(e.value)
    assert os.path.join(str(tmp_path / "w"), "ImageNetPretrained", "torchvision", "R-50.pkl") in msg
    assert os.path.join(str(tmp_path / "w"), "R-50.pkl") in msg
    assert "DETREX_WEIGHTS" in msg and "convert_torchvision_to_d2" in msg


def test_default_weights_dir(monkeypatch):
    monkeypatch.delenv("DETREX_WEIGHTS", raising=False)
    assert get_weights_dir() == os.path.expanduser("~/.cache/detrex/weights")
