"""Executing ``.py`` config files, with relative imports between config files resolved by file path.

Semantics follow detectron2's ``LazyConfig.load`` for Python files:

* the file is syntax-checked first (``SyntaxError`` naming the file and line), then ``exec``'d with
  ``__file__`` set and a private ``__package__`` (``detrex._cfg_loader<hex>.<basename>``);
* while it runs, ``builtins.__import__`` is wrapped so that **relative** imports issued from a config file
  (``from ..common.train import train``) load the named ``.py`` file by path: ``level - 1`` directories up
  from the importing file, then ``a/b.py`` for ``.a.b``. No ``__init__.py`` is needed, nothing is cached in
  ``sys.modules``: every import executes the file afresh, so each importer gets its own copy and may
  mutate it freely. Imported plain ``dict`` values become ``DictConfig``;
* ``from . import x`` and importing a directory raise ``ImportError`` explaining the rule; absolute imports
  (``from detrex.config import get_config``) are ordinary Python imports.
"""

import ast
import builtins
import contextlib
import os
import threading
import types
import uuid
from typing import Any, Dict, List

from omegaconf import DictConfig

__all__ = ["exec_config_file", "CFG_PACKAGE_PREFIX"]

CFG_PACKAGE_PREFIX = "detrex._cfg_loader"

_state = threading.local()  # stack of config files being executed, to report circular imports
_patch_lock = threading.RLock()


def _stack() -> List[str]:
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


def _private_package_name(filename: str) -> str:
    return f"{CFG_PACKAGE_PREFIX}{uuid.uuid4().hex[:8]}.{os.path.basename(filename)}"


def cast_to_config(obj: Any) -> Any:
    """Plain ``dict`` -> ``DictConfig`` (allow_objects); anything else unchanged."""
    if isinstance(obj, dict):
        return DictConfig(obj, flags={"allow_objects": True})
    return obj


def read_and_check_syntax(filename: str) -> str:
    """Return the text of ``filename`` after checking it parses; raise ``SyntaxError`` naming the file."""
    with open(filename, "r", encoding="utf-8") as f:
        content = f.read()
    try:
        ast.parse(content, filename=filename)
    except SyntaxError as e:
        where = f" at line {e.lineno}" if e.lineno else ""
        raise SyntaxError(f"Config file {filename} has a syntax error{where}: {e.msg}") from e
    return content


def _run_file(filename: str, namespace: Dict[str, Any]) -> None:
    stack = _stack()
    key = os.path.abspath(filename)
    if key in stack:
        chain = " -> ".join(stack[stack.index(key) :] + [key])
        raise ImportError(f"Circular import between config files: {chain}")
    content = read_and_check_syntax(filename)
    stack.append(key)
    try:
        exec(compile(content, filename, "exec"), namespace)
    finally:
        stack.pop()


def _resolve_relative(importer: str, name: str, level: int, fromlist) -> str:
    dots = "." * level
    if not name:
        names = ", ".join(fromlist or ()) or "x"
        raise ImportError(
            f"Config file {importer}: 'from {dots} import {names}' is not supported. Relative imports in "
            f"config files must name a .py file, e.g. 'from {dots}<file> import <name>' "
            f"(they are resolved by file path, not as packages)."
        )
    base = os.path.dirname(os.path.abspath(importer))
    for _ in range(level - 1):
        base = os.path.dirname(base)
    path = os.path.join(base, *name.split("."))
    if os.path.isfile(path + ".py"):
        return path + ".py"
    if os.path.isdir(path):
        raise ImportError(
            f"Config file {importer}: 'from {dots}{name} import ...' refers to the directory {path}. "
            f"Relative imports in config files must name a .py file, e.g. 'from {dots}{name}.<file> import ...'."
        )
    raise ImportError(f"Config file {importer}: cannot import '{dots}{name}': {path}.py does not exist.")


def _import_config_file(name: str, importer_globals: Dict[str, Any], fromlist, level: int):
    importer = importer_globals.get("__file__", "<unknown config>")
    filename = _resolve_relative(importer, name, level, fromlist)
    module = types.ModuleType(_private_package_name(filename))
    module.__file__ = filename
    module.__package__ = module.__name__
    _run_file(filename, module.__dict__)
    for attr in fromlist or ():
        if attr == "*":
            for k, v in list(module.__dict__.items()):
                if not k.startswith("_"):
                    module.__dict__[k] = cast_to_config(v)
        elif attr not in module.__dict__:
            raise ImportError(
                f"Config file {importer}: cannot import name '{attr}' from {filename} "
                f"(it defines no top-level name '{attr}')."
            )
        else:
            module.__dict__[attr] = cast_to_config(module.__dict__[attr])
    return module


@contextlib.contextmanager
def _patched_import():
    """Temporarily route relative imports made by config files to :func:`_import_config_file`."""
    with _patch_lock:
        previous = builtins.__import__

        def config_import(name, globals=None, locals=None, fromlist=(), level=0):
            package = (globals or {}).get("__package__") or ""
            if level > 0 and isinstance(package, str) and package.startswith(CFG_PACKAGE_PREFIX):
                return _import_config_file(name, globals, fromlist, level)
            return previous(name, globals, locals, fromlist, level)

        builtins.__import__ = config_import
        try:
            yield
        finally:
            builtins.__import__ = previous


def exec_config_file(filename: str) -> Dict[str, Any]:
    """Execute the config file ``filename`` and return its global namespace (unfiltered)."""
    namespace: Dict[str, Any] = {
        "__file__": filename,
        "__package__": _private_package_name(filename),
    }
    with _patched_import():
        _run_file(filename, namespace)
    return namespace
