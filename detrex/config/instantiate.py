"""``instantiate``: build the objects described by a LazyConfig tree.

Recursion rules (identical to detectron2's ``detectron2.config.instantiate``):

1. ``ListConfig`` -> every element instantiated, returned as a **new ListConfig** (``allow_objects``), so
   list-valued kwargs reach constructors as ``ListConfig``, not ``list``.
2. plain ``list`` -> plain list of instantiated elements.
3. ``DictConfig`` backed by a dataclass (structured config) -> ``OmegaConf.to_object``.
4. a mapping with a ``_target_`` key -> all values instantiated first (depth first, the target too),
   ``_target_`` popped, a string target resolved with :func:`~detrex.config.targets.locate`, and the target
   called with the remaining items as keyword arguments.
5. anything else is returned unchanged, including mappings *without* ``_target_`` (a dict-valued kwarg
   arrives as ``DictConfig``; a lazy call nested in such a dict is not built).

Interpolations (``"${..lr}"``) are resolved when values are read, so they follow overrides.

Beyond detectron2: when a constructor raises, the exception (same type, re-raised) carries a note naming
the target and the config key it was built from, e.g. ``while instantiating torch.nn.Linear at config key
'model.head'``.
"""

import dataclasses
import logging
from collections import abc
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from .targets import locate, target_to_string

__all__ = ["instantiate"]

_NOTE_FLAG = "_detrex_instantiate_noted"


def instantiate(cfg: Any) -> Any:
    """Recursively build objects from ``cfg`` following the rules in the module docstring.

    Args:
        cfg: a ``DictConfig``/``ListConfig``/dict/list tree, typically made with :class:`LazyCall`.
            Any other object is returned as is.
    """
    return _instantiate(cfg, _root_path(cfg))


def _root_path(cfg: Any) -> str:
    """Dotted key of ``cfg`` inside its parent config (e.g. ``model.backbone``), '' for a root."""
    parts = []
    node = cfg
    try:
        while isinstance(node, (DictConfig, ListConfig)) and node._get_parent() is not None:
            parts.append(str(node._key()))
            node = node._get_parent()
    except Exception:  # private OmegaConf API; the path is only used in messages
        return ""
    return ".".join(reversed(parts))


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _instantiate(cfg: Any, path: str) -> Any:
    if isinstance(cfg, ListConfig):
        items = [_instantiate(cfg[i], _join(path, i)) for i in range(len(cfg))]
        return ListConfig(items, flags={"allow_objects": True})
    if isinstance(cfg, list):
        return [_instantiate(x, _join(path, i)) for i, x in enumerate(cfg)]

    if isinstance(cfg, DictConfig) and dataclasses.is_dataclass(cfg._metadata.object_type):
        return OmegaConf.to_object(cfg)

    if isinstance(cfg, abc.Mapping) and "_target_" in cfg:
        # Reading items resolves interpolations against the full tree.
        kwargs = {k: _instantiate(v, _join(path, k)) for k, v in cfg.items()}
        target = kwargs.pop("_target_")
        if isinstance(target, str):
            name = target
            try:
                target = locate(name)
            except ImportError as e:
                raise ImportError(
                    f"Cannot instantiate config key '{path or '<root>'}': _target_ '{name}' "
                    f"could not be imported. {e}"
                ) from e
        else:
            name = target_to_string(target)
        if not callable(target):
            raise TypeError(
                f"Cannot instantiate config key '{path or '<root>'}': _target_ {name!r} resolves to "
                f"{target!r}, which is not callable."
            )
        try:
            return target(**kwargs)
        except Exception as e:
            if isinstance(e, TypeError):
                logging.getLogger(__name__).error(f"Error when instantiating {name}!")
            _add_note(e, f"while instantiating {name} at config key '{path or '<root>'}'")
            raise
    return cfg


def _add_note(exc: BaseException, note: str) -> None:
    """Attach ``note`` once (the innermost call wins when constructors nest ``instantiate``)."""
    if getattr(exc, _NOTE_FLAG, False) or not hasattr(exc, "add_note"):
        return
    try:
        exc.add_note(note)
        setattr(exc, _NOTE_FLAG, True)
    except Exception:  # exotic exception types may refuse attributes
        pass
