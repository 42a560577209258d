"""LazyConfig.load: .py configs with relative imports, YAML, result filtering and error messages."""

import textwrap

import pytest
from omegaconf import DictConfig, ListConfig

from detrex.config import ConfigFileNotFoundError, LazyConfig


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_relative_imports_two_levels_give_each_importer_its_own_copy(configs_dir):
    cfg = LazyConfig.load(str(configs_dir / "top.py"))
    assert isinstance(cfg, DictConfig)
    assert sorted(cfg.keys()) == ["derived_train", "optimizer", "train"]
    # top.py imported base/train.py directly and edited only its own copy ...
    assert cfg.train.name == "top"
    assert cfg.train.max_iter == 100
    # ... while mid/derived.py (which imports ../base/train.py) changed max_iter in its copy.
    assert cfg.derived_train.name == "run"
    assert cfg.derived_train.max_iter == 200
    # imported plain dicts became configs; lists inside became ListConfig
    assert isinstance(cfg.train.amp, DictConfig)
    assert isinstance(cfg.train.lst, ListConfig)
    assert cfg.optimizer._target_ == "torch.optim.SGD"
    assert cfg.optimizer.lr == pytest.approx(1e-4)  # "${train.lr}" resolved against the loaded root


def test_each_load_executes_files_afresh(configs_dir):
    a = LazyConfig.load(str(configs_dir / "top.py"))
    a.train.max_iter = 7
    b = LazyConfig.load(str(configs_dir / "top.py"))
    assert b.train.max_iter == 100


def test_load_filters_top_level_names(configs_dir):
    cfg = LazyConfig.load(str(configs_dir / "mid" / "derived.py"))
    # ints, plain lists and _private names are not part of the config (detectron2 behaviour)
    assert set(cfg.keys()) == {"train", "optimizer"}


def test_load_keys(configs_dir):
    train = LazyConfig.load(str(configs_dir / "mid" / "derived.py"), keys="train")
    assert isinstance(train, DictConfig) and train.max_iter == 200
    num_classes, helper = LazyConfig.load(str(configs_dir / "mid" / "derived.py"), keys=("num_classes", "helper_list"))
    assert num_classes == 80 and helper == [1, 2]
    with pytest.raises(KeyError, match="no top-level name 'nope'"):
        LazyConfig.load(str(configs_dir / "mid" / "derived.py"), keys="nope")


def test_load_yaml(configs_dir):
    cfg = LazyConfig.load(str(configs_dir / "simple.yaml"))
    assert cfg.train.max_iter == 10
    assert cfg.train.output_dir == "/tmp/x"
    assert cfg.train.amp.enabled is True
    assert cfg.model._target_ == "torch.nn.Linear"
    model = LazyConfig.load(str(configs_dir / "simple.yaml"), keys="model")
    assert model.out_features == 3


def test_dot_in_path_is_collapsed(configs_dir):
    cfg = LazyConfig.load(str(configs_dir) + "/./simple.yaml")
    assert cfg.train.max_iter == 10


def test_load_rel(tmp_path):
    _write(tmp_path / "sub" / "values.py", "params = dict(a=1)\n")
    _write(
        tmp_path / "main.py",
        """
        from detrex.config import LazyConfig
        params = LazyConfig.load_rel("sub/values.py", keys="params")
        params.a = 2
        """,
    )
    cfg = LazyConfig.load(str(tmp_path / "main.py"))
    assert cfg.params.a == 2


def test_from_dot_import_is_rejected_with_explanation(tmp_path):
    _write(tmp_path / "train.py", "train = dict(a=1)\n")
    bad = _write(tmp_path / "bad.py", "from . import train\n")
    with pytest.raises(ImportError) as info:
        LazyConfig.load(str(bad))
    msg = str(info.value)
    assert str(bad) in msg
    assert "from . import train" in msg and "must name a .py file" in msg


def test_import_from_directory_is_rejected(tmp_path):
    _write(tmp_path / "common" / "train.py", "train = dict(a=1)\n")
    bad = _write(tmp_path / "bad.py", "from .common import train\n")
    with pytest.raises(ImportError, match="refers to the directory"):
        LazyConfig.load(str(bad))


def test_missing_relative_file_and_missing_name(tmp_path):
    bad = _write(tmp_path / "bad.py", "from .nothere import x\n")
    with pytest.raises(ImportError, match="nothere.py does not exist"):
        LazyConfig.load(str(bad))
    _write(tmp_path / "train.py", "train = dict(a=1)\n")
    bad2 = _write(tmp_path / "bad2.py", "from .train import trian\n")
    with pytest.raises(ImportError, match="cannot import name 'trian'"):
        LazyConfig.load(str(bad2))


def test_syntax_error_names_the_file(tmp_path):
    bad = _write(tmp_path / "broken.py", "train = dict(\n    a=1,\n")
    with pytest.raises(SyntaxError) as info:
        LazyConfig.load(str(bad))
    assert f"Config file {bad} has a syntax error" in str(info.value)


def test_syntax_error_in_imported_file_names_that_file(tmp_path):
    broken = _write(tmp_path / "parts" / "broken.py", "x = [\n")
    main = _write(tmp_path / "main.py", "from .parts.broken import x\n")
    with pytest.raises(SyntaxError) as info:
        LazyConfig.load(str(main))
    assert str(broken) in str(info.value)


def test_circular_import_is_reported(tmp_path):
    _write(tmp_path / "a.py", "from .b import y\nx = dict(v=1)\n")
    _write(tmp_path / "b.py", "from .a import x\ny = dict(v=2)\n")
    with pytest.raises(ImportError, match="Circular import"):
        LazyConfig.load(str(tmp_path / "a.py"))


def test_absolute_imports_are_normal(tmp_path):
    cfg_file = _write(
        tmp_path / "abs.py", "import os.path\nfrom detrex.config import LazyCall as L\nm = L(os.path.join)(a='x')\n"
    )
    cfg = LazyConfig.load(str(cfg_file))
    assert cfg.m._target_ is __import__("os").path.join


def test_missing_file_and_bad_extension(tmp_path):
    missing = tmp_path / "nope" / "cfg.py"
    with pytest.raises(ConfigFileNotFoundError) as info:
        LazyConfig.load(str(missing))
    assert isinstance(info.value, FileNotFoundError)
    assert str(missing) in str(info.value)
    other = _write(tmp_path / "cfg.txt", "x")
    with pytest.raises(ValueError, match=r"must be a \.py, \.yaml or \.yml"):
        LazyConfig.load(str(other))


def test_imports_are_restored_after_a_failed_load(tmp_path):
    import builtins

    before = builtins.__import__
    _write(tmp_path / "x.py", "y = (\n")
    main = _write(tmp_path / "main.py", "from .x import y\n")
    with pytest.raises(SyntaxError):
        LazyConfig.load(str(main))
    assert builtins.__import__ is before
