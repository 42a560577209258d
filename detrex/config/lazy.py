"""detectron2's LazyConfig system on OmegaConf: ``LazyCall`` and ``LazyConfig.load/save/to_py/apply_overrides``.

Follows ``detectron2.config.lazy`` (Wu et al., detectron2, Apache-2.0) in behaviour, re-written on omegaconf
2.3. A config is a Python (or YAML) file whose top-level dict-like values form a ``DictConfig`` tree; nodes
made by ``LazyCall`` describe calls (``{"_target_": f, **kwargs}``) that :func:`instantiate` performs later.
Every node is created with OmegaConf's ``allow_objects`` flag, so classes, functions and other objects can
be stored in the tree.
"""

import copy
import dataclasses
import logging
import os
import sys
from collections import abc
from typing import Any, List, Optional, Tuple, Union

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf, SCMode

from .overrides import apply_overrides as _apply_overrides
from .py_loader import CFG_PACKAGE_PREFIX, cast_to_config, exec_config_file
from .targets import importable_name, target_to_string

__all__ = ["LazyCall", "L", "LazyConfig", "ConfigFileNotFoundError"]

logger = logging.getLogger(__name__)


class ConfigFileNotFoundError(FileNotFoundError):
    """The config file given to :meth:`LazyConfig.load` does not exist."""


class LazyCall:
    """Describe a call without making it: ``LazyCall(f)(x=1, y=2)`` -> ``DictConfig({"_target_": f, "x": 1, "y": 2})``.

    ``L`` is an alias. The target may be a callable, a dotted name (``"torch.nn.Linear"``) or a mapping that is
    itself a lazy call; anything else raises ``TypeError``. Only keyword arguments are accepted. Nested dicts
    become ``DictConfig``, lists and tuples ``ListConfig`` (omegaconf 2.3). The returned node is a normal config
    node: edit it (``cfg.model.num_queries = 900``), build it with :func:`instantiate`.

    Special cases: dataclass types are stored as their dotted name (as in detectron2), and so is ``dict``
    (``L(dict)(a=1)`` stores ``_target_: "builtins.dict"``), because omegaconf 2.3 refuses the ``dict`` type
    object as a value; ``instantiate`` resolves the name, so ``L(dict)(a=1)`` builds ``{"a": 1}``.
    ``L(list)``, ``L(tuple)`` etc. are stored as the type itself.

    Example::

        from detrex.config import LazyCall as L
        head = L(torch.nn.Linear)(in_features=256, out_features=91)
        head.out_features = 81
        module = instantiate(head)
    """

    def __init__(self, target: Any):
        if not (callable(target) or isinstance(target, (str, abc.Mapping))):
            raise TypeError(
                "LazyCall target must be a callable, a dotted name (str) or a mapping describing a lazy call; "
                f"got {type(target).__name__}: {target!r}"
            )
        self._target = target

    def __call__(self, *args: Any, **kwargs: Any) -> DictConfig:
        target = self._target
        if args:
            name = target if isinstance(target, str) else getattr(target, "__name__", repr(target))
            raise TypeError(
                f"LazyCall({name})(...) takes keyword arguments only, got {len(args)} positional argument(s); "
                f"write L({name})(name=value, ...)."
            )
        if target is dict or (isinstance(target, type) and dataclasses.is_dataclass(target)):
            target = target_to_string(target)
        kwargs["_target_"] = target
        return DictConfig(content=kwargs, flags={"allow_objects": True})


L = LazyCall


def _visit_nodes(cfg: Any, fn) -> None:
    """Call ``fn`` on every DictConfig node of ``cfg`` (depth first, interpolations not followed)."""
    if isinstance(cfg, DictConfig):
        fn(cfg)
        children = [cfg._get_node(k) for k in cfg.keys()]
    elif isinstance(cfg, ListConfig):
        children = [cfg._get_node(i) for i in range(len(cfg))]
    else:
        return
    for child in children:
        if isinstance(child, (DictConfig, ListConfig)) and not child._is_interpolation() and not child._is_none():
            _visit_nodes(child, fn)


def _targets_to_names(cfg: DictConfig) -> None:
    """Replace each callable ``_target_`` by its shortest importable dotted name (in place)."""

    def convert(node: DictConfig) -> None:
        if "_target_" not in node.keys():
            return
        raw = node._get_node("_target_")
        if raw is None or raw._is_interpolation():
            return
        target = raw._value()
        if callable(target) and not isinstance(target, str):
            name = importable_name(target)
            if name is not None and not name.startswith("__main__."):  # __main__ names load nowhere else
                node["_target_"] = name

    _visit_nodes(cfg, convert)


_PLAIN = (type(None), bool, int, float, str)


def _describe_unserializable(value: Any) -> str:
    qualname = getattr(value, "__qualname__", None)
    module = getattr(value, "__module__", None)
    if isinstance(qualname, str) and "<lambda>" in qualname:
        return "a lambda"
    if isinstance(qualname, str) and "<locals>" in qualname:
        return f"'{qualname}', defined inside a function"
    if isinstance(qualname, str) and (module is None or str(module).startswith(CFG_PACKAGE_PREFIX)):
        return f"'{qualname}', defined in a config file"
    if module == "__main__" and isinstance(qualname, str):
        return f"'{qualname}', defined in the __main__ script"
    if isinstance(qualname, str):
        return f"'{module}.{qualname}', which cannot be imported by that name"
    return f"an object of type {type(value).__module__}.{type(value).__qualname__}"


def _unserializable_keys(container: Any, prefix: str = "") -> List[Tuple[str, str]]:
    """``(dotted key, description)`` of every leaf whose YAML form does not load back."""
    found: List[Tuple[str, str]] = []
    if isinstance(container, dict):
        items = list(container.items())
    elif isinstance(container, (list, tuple)):
        items = list(enumerate(container))
    else:
        return found
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, (dict, list, tuple)):
            found.extend(_unserializable_keys(v, key + "."))
        elif not isinstance(v, _PLAIN):
            if getattr(v, "__module__", None) == "__main__":  # loads only inside the running script
                found.append((key, _describe_unserializable(v)))
                continue
            try:
                yaml.unsafe_load(yaml.dump(v))
            except Exception:
                found.append((key, _describe_unserializable(v)))
    return found


def _write_pickle(cfg: Any, filename: str) -> bool:
    try:
        import cloudpickle

        with open(filename, "wb") as f:
            cloudpickle.dump(cfg, f)
        return True
    except Exception as e:
        logger.warning(f"LazyConfig.save: could not write the pickled config {filename}: {e!r}")
        return False


class LazyConfig:
    """Load, save, print and override LazyConfig trees (``.py`` or ``.yaml`` files)."""

    @staticmethod
    def load(filename: Union[str, os.PathLike], keys: Union[None, str, Tuple[str, ...]] = None):
        """Load a config file.

        Args:
            filename: a ``.py``, ``.yaml``/``.yml`` file, or a ``.pkl`` written by :meth:`save`.
            keys: None to return the whole config; a name (``"model"``) or a tuple of names to return just
                those top-level values (plain dicts cast to ``DictConfig``, other values unfiltered).

        Returns:
            Without ``keys``: a root ``DictConfig``. For ``.py`` files it holds the top-level names whose
            value is a DictConfig/ListConfig/dict and that do not start with ``_`` (ints, strings, functions,
            plain lists and modules are dropped, as in detectron2).

        Raises:
            ConfigFileNotFoundError (a FileNotFoundError): the file does not exist.
            SyntaxError: the ``.py`` file (or one it imports) does not parse; the message names the file.
            ImportError: a relative import between config files cannot be resolved.
            KeyError: a name in ``keys`` is not defined by the file.
        """
        filename = os.fspath(filename).replace("/./", "/")
        ext = os.path.splitext(filename)[1].lower()
        if ext not in (".py", ".yaml", ".yml", ".pkl"):
            raise ValueError(
                f"Config file {filename} must be a .py, .yaml or .yml file (or a .pkl from LazyConfig.save)."
            )
        if not os.path.isfile(filename):
            what = "is a directory, not a file" if os.path.isdir(filename) else "does not exist"
            raise ConfigFileNotFoundError(f"Config file {filename} {what} (looked at {os.path.abspath(filename)}).")

        if ext == ".py":
            namespace = exec_config_file(filename)
            if keys is not None:
                return LazyConfig._select_keys(namespace, keys, filename)
            kept = {
                name: value
                for name, value in namespace.items()
                if isinstance(value, (DictConfig, ListConfig, dict)) and not name.startswith("_")
            }
            return DictConfig(kept, flags={"allow_objects": True})

        if ext == ".pkl":
            import cloudpickle

            with open(filename, "rb") as f:
                obj = cloudpickle.load(f)
        else:
            with open(filename, "r", encoding="utf-8") as f:
                obj = yaml.unsafe_load(f)
        if obj is None:
            obj = {}
        if not isinstance(obj, (dict, DictConfig)):
            raise ValueError(
                f"Config file {filename} must contain a mapping at the top level, got {type(obj).__name__}."
            )
        cfg = OmegaConf.create(obj, flags={"allow_objects": True})
        if keys is not None:
            return LazyConfig._select_keys(cfg, keys, filename)
        return cfg

    @staticmethod
    def _select_keys(source: Any, keys: Union[str, Tuple[str, ...]], filename: str):
        def pick(name: str) -> Any:
            if name not in source:
                available = sorted(str(k) for k in source.keys() if not str(k).startswith("_"))
                raise KeyError(f"Config file {filename} defines no top-level name '{name}'. Available: {available}")
            return cast_to_config(source[name])

        if isinstance(keys, str):
            return pick(keys)
        return tuple(pick(k) for k in keys)

    @staticmethod
    def load_rel(filename: str, keys: Union[None, str, Tuple[str, ...]] = None):
        """Like :meth:`load`, with ``filename`` relative to the file of the caller (e.g. another config file)."""
        caller = sys._getframe(1).f_code.co_filename
        if caller.startswith("<"):
            raise RuntimeError(
                f"LazyConfig.load_rel({filename!r}) cannot find the caller's file (called from {caller})."
            )
        return LazyConfig.load(os.path.join(os.path.dirname(caller), filename), keys)

    @staticmethod
    def save(cfg: Any, filename: str) -> None:
        """Save ``cfg`` as YAML to ``filename``; never raises (problems are logged, training goes on).

        Callable ``_target_``s are written as their shortest importable dotted names, interpolations as
        ``"${...}"`` text. Values YAML cannot refer to by name (lambdas, functions defined in config files or
        inside functions) make the YAML unloadable: a warning then names those keys and what to do, and the
        config is also pickled with cloudpickle to ``filename + ".pkl"`` (``LazyConfig.load`` reads it).
        """
        try:
            LazyConfig._save(cfg, os.fspath(filename))
        except Exception:
            logger.exception(f"LazyConfig.save: unexpected error while saving the config to {filename}; continuing.")

    @staticmethod
    def _save(cfg: Any, filename: str) -> None:
        if isinstance(cfg, dict):
            cfg = DictConfig(cfg, flags={"allow_objects": True})
        try:
            cfg = copy.deepcopy(cfg)
        except Exception as e:  # keep the original, but do not edit it
            logger.debug(f"LazyConfig.save: deepcopy failed ({e!r}); saving _target_ objects unconverted.")
        else:
            _targets_to_names(cfg)

        container: Any = None
        dumped: Optional[str] = None
        try:
            container = OmegaConf.to_container(cfg, resolve=False, structured_config_mode=SCMode.INSTANTIATE)
            dumped = yaml.dump(container, default_flow_style=None, allow_unicode=True, width=9999)
        except Exception as e:
            logger.warning(f"LazyConfig.save: cannot convert the config to YAML for {filename}: {e!r}")
        bad = _unserializable_keys(container) if container is not None else []
        if dumped is not None:
            try:
                parent = os.path.dirname(filename)
                if parent:
                    os.makedirs(parent, exist_ok=True)
                with open(filename, "w", encoding="utf-8") as f:
                    f.write(dumped)
            except OSError as e:
                logger.warning(f"LazyConfig.save: cannot write {filename}: {e!r}")
                return
            try:
                yaml.unsafe_load(dumped)
                if not bad:
                    return
            except Exception:
                pass

        pkl = filename + ".pkl"
        written = _write_pickle(cfg, pkl)
        head = f"{filename} cannot be loaded back" if dumped is not None else f"{filename} was not written"
        if bad:
            details = "; ".join(f"{k} ({what})" for k, what in bad)
            msg = (
                f"LazyConfig.save: {head}, because these config keys hold objects that YAML cannot refer to by "
                f"name: {details}. To make the saved config loadable, replace them with a named function or class "
                f"defined at module level in an importable Python module (not a lambda, not defined inside a "
                f"function, in the config file or in the __main__ script) and import it in the config."
            )
        else:
            msg = f"LazyConfig.save: {head} (the YAML does not parse; see the messages above)."
        if written:
            msg += f" A pickled copy was written to {pkl}; LazyConfig.load('{pkl}') reads it."
        logger.warning(msg)

    @staticmethod
    def to_py(cfg: Any, prefix: str = "cfg.") -> str:
        """Render ``cfg`` as Python-like text for humans (not meant to be executed).

        Interpolations are resolved; each lazy call is written as ``dotted.name(k=v, ...)`` with sorted keys,
        top-level non-call mappings as ``cfg.a.b=...`` lines, other mappings as dict literals. Formatted with
        black when it is installed (the raw text otherwise, or if black rejects it).
        """
        container = OmegaConf.to_container(cfg, resolve=True)

        def render(obj: Any, path: Optional[List[str]] = None, inside_call: bool = False) -> str:
            path = path or []
            if isinstance(obj, abc.Mapping) and "_target_" in obj:
                obj = dict(obj)
                target = target_to_string(obj.pop("_target_"))
                args = ", ".join(f"{k}={render(v, inside_call=True)}" for k, v in sorted(obj.items(), key=_sort_key))
                return "".join(path) + f"{target}({args})"
            if isinstance(obj, abc.Mapping) and not inside_call:
                lines = []
                for k, v in sorted(obj.items(), key=_sort_key):
                    if isinstance(v, abc.Mapping) and "_target_" not in v:
                        lines.append(render(v, path + [f"{k}."]))
                    else:
                        lines.append(f"{''.join(path)}{k}={render(v)}")
                return "\n".join(lines)
            if isinstance(obj, abc.Mapping):
                items = ", ".join(
                    f"{k!r}: {render(v, inside_call=True)}" for k, v in sorted(obj.items(), key=_sort_key)
                )
                return "{" + items + "}"
            if isinstance(obj, list):
                return "[" + ", ".join(render(x, inside_call=inside_call) for x in obj) + "]"
            return repr(obj)

        text = render(container, [prefix])
        try:
            import black
        except ImportError:
            return text
        try:
            return black.format_str(text, mode=black.Mode())
        except Exception:
            return text

    @staticmethod
    def apply_overrides(cfg: DictConfig, overrides: List[str]) -> DictConfig:
        """Apply command-line ``key=value`` overrides in place; see :mod:`detrex.config.overrides` for the rules."""
        return _apply_overrides(cfg, overrides)


def _sort_key(item: Tuple[Any, Any]) -> str:
    return str(item[0])
