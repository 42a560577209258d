"""detrex's helpers on top of LazyConfig: ``get_config("common/train.py")`` and ``try_get_key``.

``get_config`` resolves a path relative to the shipped config tree without a symlink (detrex used
``pkg_resources`` and a ``detrex/config/configs`` symlink made by ``setup.py``). Roots, in order:

1. the repository's ``configs/`` directory next to the ``detrex`` package directory (source checkouts and
   editable installs: ``Path(detrex.__file__).resolve().parent.parent / "configs"``);
2. ``detrex/_configs/``, the copy ``setup.py`` puts into regular (non-editable) installs.

The first root that contains the requested file wins.
"""

import os
from pathlib import Path
from typing import Any, List

from omegaconf import OmegaConf

from .lazy import LazyConfig

__all__ = ["get_config", "try_get_key", "config_roots"]

_CONFIG_SUFFIXES = (".py", ".yaml", ".yml")


def config_roots() -> List[Path]:
    """Directories searched by :func:`get_config`, in order (they need not exist)."""
    package_dir = Path(__file__).resolve().parent.parent  # .../detrex
    return [package_dir.parent / "configs", package_dir / "_configs"]


def _available(root: Path, rel: str) -> str:
    """Config files under the folder of ``rel`` (or the nearest existing ancestor) for error messages."""
    folder = (root / rel).parent
    while folder != root and not folder.is_dir() and root in folder.parents:
        folder = folder.parent
    if not folder.is_dir():
        return f"Folder {folder} does not exist."
    names = sorted(
        str(p.relative_to(root))
        for p in folder.rglob("*")
        if p.suffix in _CONFIG_SUFFIXES and "__pycache__" not in p.parts
    )
    if not names:
        return f"There are no config files under {folder}."
    shown = ", ".join(names[:40]) + (f", ... ({len(names)} in all)" if len(names) > 40 else "")
    return f"Available configs under {folder}: {shown}."


def get_config(config_path: str):
    """Load a config shipped with detrex, e.g. ``get_config("common/train.py").train``.

    Returns a fresh root ``DictConfig`` on every call, so the result can be mutated freely.

    Raises:
        RuntimeError: no root holds ``config_path``; the message names the paths tried and lists the
            configs available in that folder.
    """
    rel = os.fspath(config_path).lstrip("/")
    roots = config_roots()
    for root in roots:
        candidate = root / rel
        if candidate.is_file():
            return LazyConfig.load(str(candidate))
    existing = [r for r in roots if r.is_dir()]
    tried = ", ".join(str(r / rel) for r in roots)
    if existing:
        hint = _available(existing[0], rel)
    else:
        hint = "No detrex config directory exists (" + ", ".join(str(r) for r in roots) + ")."
    raise RuntimeError(f"{config_path} not available in detrex configs: tried {tried}. {hint}")


def try_get_key(cfg: Any, *keys: str, default: Any = None) -> Any:
    """Value of the first of ``keys`` (dotted paths) present in ``cfg``, else ``default`` (as in detrex)."""
    sentinel = object()
    for key in keys:
        value = OmegaConf.select(cfg, key, default=sentinel)
        if value is not sentinel:
            return value
    return default
