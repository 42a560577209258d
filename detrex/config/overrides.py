"""``key=value`` command-line overrides for LazyConfig trees (``LazyConfig.apply_overrides``).

Syntax, one string per override (as in ``tools/train_net.py ... train.max_iter=1000 model.device=cpu``):

* ``a.b.c=value`` changes an **existing** key. A key that does not exist is an error
  (:class:`ConfigKeyError`, a ``KeyError``) that names the closest existing keys, so a typo such as
  ``train.max_ite=5`` fails at once instead of silently creating a new key (detectron2 creates it).
* ``+a.b.c=value`` adds a **new** key (intermediate nodes are created); it is an error if the key exists.
  ``++a.b.c=value`` sets the key whether or not it exists (as in hydra).
* ``a.lst.0=9`` sets a list item. Setting ``a.b.c`` where ``a.b`` holds a plain value is an error.
* ``~key`` (deletion) is not supported (``NotImplementedError``, as in detectron2).

Values are parsed as Python literals first (``5``, ``1e-4``, ``[1, 2]``, ``(1, 2)``, ``{'a': 1}``, ``None``,
``True``, ``'quoted'``); then ``null``/``true``/``false`` (any case), ``inf``/``nan`` as hydra does;
bracketed values that are not Python literals (``[res4,res5]``, ``{a:1}``) go through hydra-core's override
grammar; anything else is taken verbatim as a string (``train.output_dir=/data/run1`` -> ``'/data/run1'``,
``x=${train.output_dir}/eval`` stays an interpolation). An unquoted value containing ``=`` is an error:
quote it (``x='a=b'``).

Type check: when the existing value is a bool, int/float, str, list or dict and the new value has an
incompatible type (``train.max_iter=abc``) an :class:`OverrideTypeError` names the key, the old type and
the new value. Compatible: int <-> float (an integral float replacing an int becomes an int:
``train.max_iter=1e5`` -> ``100000``); a str and a list of str (dataset ``names`` take both); ``None``
may replace anything and anything may replace ``None``. Interpolations and other objects (classes,
functions) are not checked.

A dict value is **merged** into an existing dict node (``OmegaConf.update(merge=True)``, as detectron2
does): ``model.x={'a': 1}`` changes ``model.x.a`` and keeps the other keys of ``model.x``.
"""

import ast
import difflib
import math
import re
from typing import Any, Iterable, List, Optional, Tuple

from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["apply_overrides", "parse_override", "parse_value", "ConfigKeyError", "OverrideError", "OverrideTypeError"]

_KEY_RE = re.compile(r"^[\w\-]+(\.[\w\-]+)*$")
_MISSING = object()


class ConfigKeyError(KeyError):
    """A key named in an override does not exist, or cannot be set (a KeyError with a readable message)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class OverrideError(ValueError):
    """An override string or its value cannot be parsed or applied."""


class OverrideTypeError(OverrideError, TypeError):
    """The new value's type does not fit the existing value's type."""


# --------------------------------------------------------------------------- parsing


def parse_override(override: str) -> Tuple[str, str, Any]:
    """Split ``override`` into ``(mode, key, value)``; mode is ``"set"``, ``"add"`` (``+``) or ``"force"`` (``++``)."""
    if not isinstance(override, str):
        raise TypeError(f"Overrides must be strings 'key=value', got {type(override).__name__}: {override!r}")
    text = override.strip()
    if text.startswith("~"):
        raise NotImplementedError(f"Override '{override}': deleting keys ('~key') is not supported.")
    if "=" not in text:
        raise OverrideError(f"Override '{override}' has no '=': write key=value, e.g. train.max_iter=1000.")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    mode = "set"
    if key.startswith("++"):
        mode, key = "force", key[2:]
    elif key.startswith("+"):
        mode, key = "add", key[1:]
    if not _KEY_RE.match(key):
        raise OverrideError(
            f"Override '{override}': '{key}' is not a valid key; expected dotted names such as "
            f"'train.max_iter' or 'model.lst.0'."
        )
    if "=" in raw and raw[:1] not in ("'", '"', "[", "{", "("):
        raise OverrideError(
            f"Override '{override}' contains more than one '='. If '=' belongs to the value, quote the value: "
            f"{key}='{raw}'."
        )
    return mode, key, parse_value(raw, override)


def parse_value(text: str, override: Optional[str] = None) -> Any:
    """Parse the value part of an override (rules in the module docstring)."""
    where = f"Override '{override}'" if override is not None else f"Value {text!r}"
    if text == "":
        return ""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    else:
        if isinstance(value, (set, frozenset, complex)):
            raise OverrideError(f"{where}: {type(value).__name__} values are not supported in configs; use a list.")
        return value
    lowered = text.lower()
    words = {
        "null": None,
        "true": True,
        "false": False,
        "inf": math.inf,
        "+inf": math.inf,
        "-inf": -math.inf,
        "nan": math.nan,
    }
    if lowered in words:
        return words[lowered]
    if text[0] in "[{(":
        return _parse_with_hydra(text, where)
    if text[0] in "'\"":
        raise OverrideError(f"{where}: unbalanced quotes in value {text!r}.")
    return text


def _parse_with_hydra(text: str, where: str) -> Any:
    hint = "Use Python literal syntax, e.g. [1, 2], (800, 1333) or {'a': 1}."
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser
    except ImportError as e:  # pragma: no cover - hydra-core is a dependency
        raise OverrideError(f"{where}: cannot parse value {text!r}. {hint}") from e
    try:
        parsed = OverridesParser.create().parse_overrides([f"value={text}"])[0]
    except Exception as e:
        raise OverrideError(f"{where}: cannot parse value {text!r}. {hint}") from e
    if parsed.is_sweep_override():
        raise OverrideError(f"{where}: value {text!r} is a sweep (several values); give one value. {hint}")
    value = parsed.value()
    if not _is_plain(value):
        raise OverrideError(f"{where}: cannot use value {text!r} ({type(value).__name__}). {hint}")
    return value


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _is_plain(v) for k, v in value.items())
    return False


# --------------------------------------------------------------------------- tree helpers


def _child(node: Any, part: str) -> Tuple[bool, Any, bool]:
    """``(exists, raw value or container node, is_interpolation)`` for ``node[part]``, without resolving."""
    if isinstance(node, DictConfig):
        key: Any = part
        child = node._get_node(part, throw_on_missing_key=False)
        if child is None and part.lstrip("-").isdigit():  # int keys, e.g. from YAML
            key = int(part)
            child = node._get_node(key, throw_on_missing_key=False)
        if child is None:
            return False, None, False
    elif isinstance(node, ListConfig):
        if not part.isdigit() or int(part) >= len(node):
            return False, None, False
        child = node._get_node(int(part))
    else:
        return False, None, False
    if child._is_interpolation():
        return True, child._value(), True
    if isinstance(child, (DictConfig, ListConfig)):
        return True, (None if child._is_none() else child), False
    return True, child._value(), False


def all_keys(cfg: Any, prefix: str = "") -> List[str]:
    """Every dotted key in ``cfg`` (intermediate nodes and list items included), without resolving."""
    out: List[str] = []
    if isinstance(cfg, DictConfig) and not cfg._is_none():
        items: Iterable = [(k, cfg._get_node(k)) for k in cfg.keys()]
    elif isinstance(cfg, ListConfig) and not cfg._is_none():
        items = [(i, cfg._get_node(i)) for i in range(len(cfg))]
    else:
        return out
    for k, node in items:
        full = f"{prefix}{k}"
        out.append(full)
        if isinstance(node, (DictConfig, ListConfig)) and not node._is_interpolation():
            out.extend(all_keys(node, full + "."))
    return out


def _suggest(cfg: DictConfig, key: str) -> List[str]:
    keys = [k for k in all_keys(cfg) if not k.rsplit(".", 1)[-1].isdigit()]  # no list items
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    last = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == last and k not in close]
    return (close + same_leaf)[:4]


def _missing_key_error(cfg: DictConfig, override: str, key: str, parent: str, parent_node: Any) -> ConfigKeyError:
    msg = f"Override '{override}': key '{key}' does not exist in the config."
    suggestions = _suggest(cfg, key)
    if suggestions:
        msg += " Did you mean: " + ", ".join(f"'{s}'" for s in suggestions) + "?"
    elif isinstance(parent_node, DictConfig):
        names = list(parent_node.keys())
        shown = ", ".join(map(str, names[:20])) + (", ..." if len(names) > 20 else "")
        msg += f" Keys under '{parent or '<root>'}': {shown or '(none)'}."
    value_text = override.split("=", 1)[1] if "=" in override else ""
    msg += f" To add it as a new key on purpose, write '+{key}={value_text}'."
    return ConfigKeyError(msg)


def _describe(value: Any) -> str:
    if isinstance(value, DictConfig):
        return "dict"
    if isinstance(value, ListConfig):
        return "list"
    return type(value).__name__


def _check_type(override: str, key: str, old: Any, new: Any) -> Any:
    """Return ``new`` (an integral float replacing an int becomes int) or raise OverrideTypeError."""
    if old is None or new is None:
        return new
    if isinstance(new, str) and "${" in new:  # assigning an interpolation: checked when resolved
        return new
    if isinstance(old, bool):
        ok, hint = isinstance(new, bool), "Use True or False."
    elif isinstance(old, (int, float)):
        ok, hint = isinstance(new, (int, float)) and not isinstance(new, bool), "Give a number."
        if ok and isinstance(old, int) and isinstance(new, float) and math.isfinite(new) and new.is_integer():
            new = int(new)
    elif isinstance(old, str):
        # a list of names may replace a name (dataset ``names`` accept both)
        ok = isinstance(new, str) or (isinstance(new, (list, tuple)) and all(isinstance(v, str) for v in new))
        hint = f"To pass it as text, quote it: {key}='{new}' (in a shell: {key}=\"'{new}'\")."
    elif isinstance(old, (ListConfig, list, tuple)):
        names = len(old) > 0 and all(isinstance(v, str) for v in old)
        ok = isinstance(new, (list, tuple)) or (names and isinstance(new, str))
        hint = "Give a list, e.g. [1, 2]."
    elif isinstance(old, (DictConfig, dict)):
        ok, hint = isinstance(new, dict), "Give a dict (merged into the existing node), or set its keys one by one."
    else:
        return new  # classes, functions, enums, ...: not checked
    if not ok:
        raise OverrideTypeError(
            f"Override '{override}': key '{key}' currently holds {_article(_describe(old))} "
            f"({_short(old)}), but the new value {new!r} is {_article(type(new).__name__)}. {hint}"
        )
    return new


def _article(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    if isinstance(value, (DictConfig, ListConfig)):
        try:
            text = repr(OmegaConf.to_container(value, resolve=False))
        except Exception:
            pass
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- applying


def _tuples_to_lists(value: Any) -> Any:
    """Tuples become lists (omegaconf stores both as ListConfig, but cannot merge a tuple)."""
    if isinstance(value, (list, tuple)):
        return [_tuples_to_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _tuples_to_lists(v) for k, v in value.items()}
    return value


def _apply_one(cfg: DictConfig, override: str) -> None:
    mode, key, value = parse_override(override)
    parts = key.split(".")
    node: Any = cfg
    complete = True  # every prefix of the key exists
    for i, part in enumerate(parts[:-1]):
        prefix = ".".join(parts[: i + 1])
        exists, child, interp = _child(node, part)
        if exists and interp:
            raise ConfigKeyError(
                f"Override '{override}': cannot set '{key}' because '{prefix}' is an interpolation ({child}); "
                f"override the key it points to, or '{prefix}' itself."
            )
        if not exists:
            if mode == "set":
                raise _missing_key_error(cfg, override, key, ".".join(parts[:i]), node)
            if isinstance(node, ListConfig):
                raise ConfigKeyError(
                    f"Override '{override}': list '{'.'.join(parts[:i]) or '<root>'}' has no item {part} "
                    f"({len(node)} items); new list items cannot be added by overrides."
                )
            complete = False
            break
        if not isinstance(child, (DictConfig, ListConfig)):
            raise ConfigKeyError(
                f"Override '{override}': cannot set '{key}' because '{prefix}' holds a value "
                f"({_short(child)}), not a config node."
            )
        node = child
    if complete:
        parent = ".".join(parts[:-1])
        exists, old, is_interp = _child(node, parts[-1])
        if not exists:
            if isinstance(node, ListConfig):
                raise ConfigKeyError(
                    f"Override '{override}': list '{parent or '<root>'}' has no item {parts[-1]} ({len(node)} items)."
                )
            if mode == "set":
                raise _missing_key_error(cfg, override, key, parent, node)
        else:
            if mode == "add":
                raise OverrideError(
                    f"Override '{override}': key '{key}' already exists; drop the leading '+' to change it "
                    f"(or write '++{key}=...' to set it whether or not it exists)."
                )
            if not is_interp:
                value = _check_type(override, key, old, value)
    try:
        OmegaConf.update(cfg, key, _tuples_to_lists(value), merge=True, force_add=(mode != "set"))
    except Exception as e:
        raise OverrideError(f"Override '{override}' could not be applied: {e}") from e


def apply_overrides(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    """Apply ``key=value`` strings to ``cfg`` in order (in place) and return ``cfg``.

    Raises:
        ConfigKeyError: unknown key (with suggestions) or a key below a plain value.
        OverrideTypeError: the new value's type does not fit the existing one.
        OverrideError: malformed override or value.
        NotImplementedError: deletion overrides (``~key``).
    """
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"apply_overrides expects a DictConfig (e.g. from LazyConfig.load), got {type(cfg).__name__}.")
    if isinstance(overrides, str):
        overrides = [overrides]
    for override in overrides:
        _apply_one(cfg, override)
    return cfg
