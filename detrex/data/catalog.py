"""`DatasetCatalog` and `MetadataCatalog`: global name -> dataset / metadata registries.

Same names and semantics as detectron2's catalogs:

- ``DatasetCatalog.register(name, func)`` stores a zero-argument callable returning ``list[dict]`` in
  detectron2's dataset-dict format; ``DatasetCatalog.get(name)`` calls it (on every call, nothing is cached).
  Registering a name twice is an error; an unknown name raises ``KeyError`` listing the registered names.
- ``MetadataCatalog.get(name)`` returns (creating on first use) a mutable :class:`Metadata` bag with keys such
  as ``thing_classes``, ``thing_dataset_id_to_contiguous_id``, ``json_file``, ``image_root``,
  ``evaluator_type``. A key, once set, cannot be changed to a different value.
"""

import types
from collections import UserDict
from typing import Any, Callable, Dict, List

__all__ = ["DatasetCatalog", "MetadataCatalog", "Metadata", "DatasetNotRegisteredError"]


class DatasetNotRegisteredError(KeyError):
    """A dataset name that is not registered; the message lists the registered names.

    A ``KeyError`` (as in detectron2), so existing ``except KeyError`` code keeps working.
    """

    def __str__(self) -> str:  # the plain message, not KeyError's quoted repr
        return str(self.args[0]) if self.args else ""


class _DatasetCatalog(UserDict):
    """name -> zero-argument callable returning ``list[dict]``."""

    def register(self, name: str, func: Callable[[], List[Dict]]) -> None:
        if not callable(func):
            raise TypeError(f"DatasetCatalog.register('{name}', func): func must be callable, got {type(func)}")
        if name in self:
            raise AssertionError(f"Dataset '{name}' is already registered! Use DatasetCatalog.remove('{name}') first.")
        self[name] = func

    def get(self, name: str) -> List[Dict]:
        """Call the function registered as ``name`` and return its list of dataset dicts."""
        try:
            func = self[name]
        except KeyError as e:
            raise DatasetNotRegisteredError(
                f"Dataset '{name}' is not registered! Available datasets are: {', '.join(sorted(self.keys()))}. "
                "Register your own with detrex.data.register_coco_instances(name, {}, json_file, image_root)."
            ) from e
        return func()

    def list(self) -> List[str]:
        return list(self.keys())

    def remove(self, name: str) -> None:
        self.pop(name)

    def __str__(self) -> str:
        return "DatasetCatalog(registered datasets: {})".format(", ".join(self.keys()))

    __repr__ = __str__


DatasetCatalog = _DatasetCatalog()


class Metadata(types.SimpleNamespace):
    """Attribute bag for one dataset. ``name`` is set on creation; other keys are free-form.

    Setting an existing key to a different value raises ``AssertionError`` (like detectron2), so that two
    registrations cannot silently disagree on, e.g., the class list.
    """

    name: str = "N/A"

    def __getattr__(self, key: str) -> Any:
        # only called when normal attribute lookup fails
        if key.startswith("__"):
            raise AttributeError(key)
        raise AttributeError(
            f"Attribute '{key}' does not exist in the metadata of dataset '{self.name}'. "
            f"Available keys are {sorted(self.__dict__.keys())}."
        )

    def __setattr__(self, key: str, val: Any) -> None:
        try:
            oldval = self.__dict__[key]
        except KeyError:
            super().__setattr__(key, val)
            return
        if oldval != val:
            raise AssertionError(
                f"Attribute '{key}' in the metadata of '{self.name}' cannot be set to a different value!\n"
                f"{oldval} != {val}"
            )

    def as_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)

    def set(self, **kwargs: Any) -> "Metadata":
        for k, v in kwargs.items():
            setattr(self, k, v)
        return self

    def get(self, key: str, default: Any = None) -> Any:
        return self.__dict__.get(key, default)


class _MetadataCatalog(UserDict):
    """name -> :class:`Metadata` (created empty on first ``get``)."""

    def get(self, name: str) -> Metadata:
        if not name:
            raise ValueError("MetadataCatalog.get needs a non-empty dataset name")
        r = self.data.get(name)
        if r is None:
            r = self[name] = Metadata(name=name)
        return r

    def list(self) -> List[str]:
        return list(self.keys())

    def remove(self, name: str) -> None:
        self.pop(name)

    def __str__(self) -> str:
        return "MetadataCatalog(registered metadata: {})".format(", ".join(self.keys()))

    __repr__ = __str__


MetadataCatalog = _MetadataCatalog()
