"""LazyConfig: detectron2's Python-file config system, re-implemented on omegaconf.

    from detrex.config import LazyCall as L, LazyConfig, instantiate, get_config

    cfg = LazyConfig.load("projects/dab_detr/configs/dab_detr_r50_50ep.py")
    LazyConfig.apply_overrides(cfg, ["train.max_iter=100", "train.output_dir=/tmp/run"])
    model = instantiate(cfg.model)

Modules: :mod:`.lazy` (LazyCall, LazyConfig), :mod:`.instantiate`, :mod:`.overrides` (``key=value``
rules), :mod:`.py_loader` (executing ``.py`` configs), :mod:`.targets` (dotted names <-> objects),
:mod:`.config` (``get_config``, ``try_get_key``). Importing this package imports omegaconf and PyYAML only.
"""

from .config import get_config, try_get_key
from .instantiate import instantiate
from .lazy import ConfigFileNotFoundError, L, LazyCall, LazyConfig
from .overrides import ConfigKeyError, OverrideError, OverrideTypeError
from .targets import locate

__all__ = [
    "LazyCall",
    "L",
    "LazyConfig",
    "instantiate",
    "get_config",
    "try_get_key",
    "locate",
    "ConfigFileNotFoundError",
    "ConfigKeyError",
    "OverrideError",
    "OverrideTypeError",
]
