"""Turning ``_target_`` values into objects and back.

``locate("torch.nn.Linear")`` imports and returns an object from its dotted name;
``target_to_string(torch.nn.Linear)`` gives the shortest dotted name that ``locate`` maps back to the same
object (``"torch.nn.Linear"`` rather than ``"torch.nn.modules.linear.Linear"``), which is what
``LazyConfig.save`` writes into YAML. Semantics follow detectron2's ``detectron2.utils.registry.locate`` and
``_convert_target_to_string``.
"""

import pydoc
from typing import Any, Optional

__all__ = ["locate", "target_to_string", "importable_name"]


def locate(name: str) -> Any:
    """Return the object named by the dotted path ``name``; raise ``ImportError`` naming it if not found.

    ``pydoc.locate`` is tried first; hydra's ``_locate`` (imported lazily) then handles paths that
    ``pydoc.locate`` misses, e.g. ``torch.optim.sgd.SGD``.
    """
    if not isinstance(name, str):
        raise TypeError(f"locate() expects a dotted name as str, got {type(name).__name__}: {name!r}")
    try:
        obj = pydoc.locate(name)
    except pydoc.ErrorDuringImport as e:
        # The module exists but raised while importing: show the real error, not "not found".
        raise ImportError(f"Error while importing '{name}': {e.value!r}") from e.value
    if obj is not None:
        return obj
    try:
        from hydra.utils import _locate  # private but stable in hydra-core 1.x
    except ImportError:  # pragma: no cover - hydra-core is a dependency
        _locate = None
    if _locate is not None:
        try:
            return _locate(name)
        except Exception as e:  # hydra raises ImportError/ValueError with its own wording
            raise ImportError(
                f"Cannot locate '{name}': no importable module/attribute with that dotted name ({e})."
            ) from e
    raise ImportError(f"Cannot locate '{name}': no importable module/attribute with that dotted name.")


def importable_name(obj: Any) -> Optional[str]:
    """The shortest dotted name under which ``obj`` (a class or function) can be imported, or None.

    None means the object cannot be referred to by name: lambdas, functions or classes defined inside
    other functions (``<locals>``), functions defined in a config file, objects without ``__qualname__``.
    """
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    parts = module.split(".")
    # Shortest prefix first: torch.Linear, torch.nn.Linear, torch.nn.modules.Linear, ...
    for k in range(1, len(parts) + 1):
        candidate = ".".join(parts[:k] + [qualname])
        try:
            if locate(candidate) is obj:
                return candidate
        except Exception:
            continue
    return None


def target_to_string(target: Any) -> str:
    """Dotted name of a callable ``_target_`` (strings are returned unchanged).

    Falls back to ``module.qualname`` when no importable name exists (for error messages and ``to_py``);
    use :func:`importable_name` to find out whether the name actually loads back.
    """
    if isinstance(target, str):
        return target
    name = importable_name(target)
    if name is not None:
        return name
    return f"{getattr(target, '__module__', None)}.{getattr(target, '__qualname__', repr(target))}"
