"""get_config and try_get_key."""

from pathlib import Path

import pytest
from omegaconf import DictConfig

import detrex
import detrex.config.config as config_mod
from detrex.config import get_config, try_get_key


@pytest.fixture
def roots(tmp_path, monkeypatch):
    repo, packaged = tmp_path / "repo_configs", tmp_path / "packaged_configs"
    monkeypatch.setattr(config_mod, "config_roots", lambda: [repo, packaged])
    return repo, packaged


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_roots_are_repo_configs_then_packaged_copy():
    package_dir = Path(detrex.__file__).resolve().parent
    assert config_mod.config_roots() == [package_dir.parent / "configs", package_dir / "_configs"]


def test_missing_config_raises_with_path_and_listing(roots):
    repo, _ = roots
    _write(repo / "common" / "train.py", "train = dict(max_iter=1)\n")
    _write(repo / "common" / "data" / "coco.py", "dataloader = dict()\n")
    with pytest.raises(RuntimeError) as info:
        get_config("common/trian.py")
    msg = str(info.value)
    assert "common/trian.py not available in detrex configs" in msg
    assert str(repo / "common" / "trian.py") in msg
    assert "common/train.py" in msg and "common/data/coco.py" in msg


def test_missing_config_in_real_tree():
    with pytest.raises(RuntimeError, match="definitely_not_a_config.py not available"):
        get_config("common/definitely_not_a_config.py")


def test_repo_root_first_then_packaged_copy_and_fresh_results(roots):
    repo, packaged = roots
    _write(packaged / "common" / "train.py", "train = dict(max_iter=2)\n")
    assert get_config("common/train.py").train.max_iter == 2
    _write(repo / "common" / "train.py", "train = dict(max_iter=1)\n")
    first = get_config("common/train.py")
    assert isinstance(first, DictConfig) and first.train.max_iter == 1
    first.train.max_iter = 99
    assert get_config("common/train.py").train.max_iter == 1


def test_relative_imports_inside_shipped_configs(roots):
    repo, _ = roots
    _write(repo / "common" / "train.py", "train = dict(max_iter=1)\n")
    _write(repo / "common" / "derived.py", "from .train import train\ntrain.max_iter = 3\n")
    assert get_config("common/derived.py").train.max_iter == 3


def test_try_get_key():
    cfg = DictConfig({"train": {"seed": 3, "none": None}, "other": {"x": 1}})
    assert try_get_key(cfg, "train.seed") == 3
    assert try_get_key(cfg, "train.missing", "other.x") == 1
    assert try_get_key(cfg, "train.none", default=5) is None  # present (None) counts as found
    assert try_get_key(cfg, "nope", "train.nope", default=7) == 7
