"""LazyConfig.save / load round trips, the .pkl fallback, and to_py."""

import math
import sys

import pytest
import torch
from omegaconf import DictConfig

from detrex.config import L, LazyConfig, instantiate


def _model_cfg():
    layer = L(torch.nn.TransformerEncoderLayer)(d_model=8, nhead=2, dim_feedforward=16, batch_first=True)
    return DictConfig(
        {
            "train": {"lr": 0.01, "max_iter": 10, "output_dir": "./out"},
            "model": L(torch.nn.TransformerEncoder)(encoder_layer=layer, num_layers=2, enable_nested_tensor=False),
            "head": L("torch.nn.Linear")(in_features=8, out_features=3, bias=False),
            "optimizer": L(torch.optim.SGD)(params=None, lr="${..train.lr}", momentum=0.9),
            "sizes": (800, 1333),
        },
        flags={"allow_objects": True},
    )


def test_round_trip_yaml_loads_and_instantiates_equal(tmp_path, config_log):
    cfg = _model_cfg()
    path = tmp_path / "config.yaml"
    LazyConfig.save(cfg, str(path))
    assert not config_log.messages(), config_log.messages()
    assert not (tmp_path / "config.yaml.pkl").exists()

    text = path.read_text()
    assert "_target_: torch.nn.TransformerEncoder\n" in text  # shortest importable name
    assert "_target_: torch.nn.TransformerEncoderLayer" in text
    assert "torch.nn.modules" not in text
    assert "${..train.lr}" in text  # interpolations stay interpolations

    loaded = LazyConfig.load(str(path))
    assert loaded.model.encoder_layer.d_model == 8
    assert list(loaded.sizes) == [800, 1333]
    loaded.train.lr = 0.5
    assert loaded.optimizer.lr == 0.5

    torch.manual_seed(0)
    original = instantiate(cfg.model)
    torch.manual_seed(0)
    rebuilt = instantiate(loaded.model)
    assert type(rebuilt) is torch.nn.TransformerEncoder
    assert len(rebuilt.layers) == 2
    a, b = original.state_dict(), rebuilt.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    head = instantiate(loaded.head)
    assert isinstance(head, torch.nn.Linear) and head.bias is None and head.out_features == 3


def test_save_does_not_modify_the_input(tmp_path):
    cfg = _model_cfg()
    LazyConfig.save(cfg, str(tmp_path / "config.yaml"))
    assert cfg.model._target_ is torch.nn.TransformerEncoder


def test_lambda_warns_naming_the_key_and_writes_pkl(tmp_path, config_log):
    cfg = _model_cfg()
    cfg.optimizer.params = L(dict)(lr_factor_func=lambda name: 0.1 if "backbone" in name else 1.0)
    path = tmp_path / "config.yaml"
    LazyConfig.save(cfg, str(path))

    assert path.exists()  # still written, for humans
    warnings = config_log.messages()
    assert len(warnings) == 1
    msg = warnings[0]
    assert "optimizer.params.lr_factor_func (a lambda)" in msg
    assert "named function" in msg
    assert "config.yaml.pkl" in msg

    pkl = tmp_path / "config.yaml.pkl"
    assert pkl.exists()
    restored = LazyConfig.load(str(pkl))
    fn = restored.optimizer.params.lr_factor_func
    assert fn("backbone.res2") == 0.1 and fn("head") == 1.0
    assert restored.model.num_layers == 2


def test_named_importable_function_saves_as_yaml(tmp_path, config_log):
    cfg = DictConfig({"params": L(dict)(fn=math.sqrt)}, flags={"allow_objects": True})
    LazyConfig.save(cfg, str(tmp_path / "c.yaml"))
    assert not config_log.messages()
    assert not (tmp_path / "c.yaml.pkl").exists()
    assert LazyConfig.load(str(tmp_path / "c.yaml")).params.fn is math.sqrt


def test_function_from_a_config_file_is_named(tmp_path, config_log):
    cfg_file = tmp_path / "cfg.py"
    cfg_file.write_text("def factor(name):\n    return 0.5\n\noptimizer = dict(lr_factor_func=factor)\n")
    cfg = LazyConfig.load(str(cfg_file))
    LazyConfig.save(cfg, str(tmp_path / "config.yaml"))
    (msg,) = config_log.messages()
    assert "optimizer.lr_factor_func ('factor', defined in a config file)" in msg
    assert LazyConfig.load(str(tmp_path / "config.yaml.pkl")).optimizer.lr_factor_func("x") == 0.5


def test_save_never_raises(tmp_path, config_log):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    LazyConfig.save(_model_cfg(), str(blocker / "config.yaml"))  # parent is a file: cannot write
    assert any("cannot write" in m for m in config_log.messages())


def test_save_creates_parent_directories(tmp_path):
    path = tmp_path / "new" / "dir" / "config.yaml"
    LazyConfig.save(DictConfig({"a": {"b": 1}}), str(path))
    assert LazyConfig.load(str(path)).a.b == 1


def test_to_py(monkeypatch):
    cfg = _model_cfg()
    text = LazyConfig.to_py(cfg)
    assert "cfg.train.lr = 0.01" in text
    assert "cfg.head = torch.nn.Linear(bias=False, in_features=8, out_features=3)" in text
    assert "lr=0.01, momentum=0.9" in text  # interpolation resolved
    assert "torch.nn.TransformerEncoderLayer(" in text

    monkeypatch.setitem(sys.modules, "black", None)  # black not installed: raw text
    raw = LazyConfig.to_py(cfg, prefix="c.")
    assert "c.train.lr=0.01" in raw
    assert "c.head=torch.nn.Linear(bias=False, in_features=8, out_features=3)" in raw


@pytest.mark.parametrize("ext", [".yaml", ".yml"])
def test_yaml_extensions(tmp_path, ext):
    path = tmp_path / f"c{ext}"
    LazyConfig.save(DictConfig({"x": {"y": [1, 2]}}), str(path))
    assert list(LazyConfig.load(str(path)).x.y) == [1, 2]
