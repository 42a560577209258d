"""`Instances`: per-image fields of equal length (detectron2 names and semantics)."""
import itertools
from typing import Any, Dict, List, Tuple

import torch

__all__ = ["Instances"]


class Instances:
    """A set of N instances in one image of size `image_size = (height, width)`.

    Every field (a tensor, `Boxes`, list, or anything with `__len__`/`__getitem__`) has length N.
    Fields are attributes: `inst.gt_boxes = Boxes(...)`, `inst.gt_classes = tensor`. The DETR models use
    `gt_boxes` (absolute XYXY in augmented-image pixels) and `gt_classes` (int64 contiguous ids) in training,
    and produce `pred_boxes`, `scores`, `pred_classes` in evaluation.
    """

    def __init__(self, image_size: Tuple[int, int], **kwargs: Any):
        self._image_size = (int(image_size[0]), int(image_size[1]))
        self._fields: Dict[str, Any] = {}
        for k, v in kwargs.items():
            self.set(k, v)

    @property
    def image_size(self) -> Tuple[int, int]:
        return self._image_size

    def __setattr__(self, name: str, val: Any) -> None:
        if name.startswith("_"):
            super().__setattr__(name, val)
        else:
            self.set(name, val)

    def __getattr__(self, name: str) -> Any:
        # read _fields through __dict__: during unpickling it does not exist yet, and `self._fields` would
        # re-enter __getattr__ forever
        fields = self.__dict__.get("_fields")
        if fields is None or name not in fields:
            raise AttributeError(f"Cannot find field '{name}' in the given Instances (fields: {list(fields or [])})")
        return fields[name]

    def set(self, name: str, value: Any) -> None:
        n = len(value)
        if self._fields and n != len(self):
            raise ValueError(f"Adding a field '{name}' of length {n} to an Instances of length {len(self)}")
        self._fields[name] = value

    def has(self, name: str) -> bool:
        return name in self._fields

    def remove(self, name: str) -> None:
        del self._fields[name]

    def get(self, name: str) -> Any:
        return self._fields[name]

    def get_fields(self) -> Dict[str, Any]:
        return self._fields

    def to(self, *args: Any, **kwargs: Any) -> "Instances":
        ret = Instances(self._image_size)
        for k, v in self._fields.items():
            if hasattr(v, "to"):
                v = v.to(*args, **kwargs)
            ret.set(k, v)
        return ret

    def pin_memory(self) -> "Instances":
        """The fields in page-locked memory (``DataLoader(pin_memory=True)`` calls this), for non-blocking
        copies to a GPU; fields without ``pin_memory`` are kept as they are."""
        ret = Instances(self._image_size)
        for k, v in self._fields.items():
            ret.set(k, v.pin_memory() if hasattr(v, "pin_memory") else v)
        return ret

    def __getitem__(self, item) -> "Instances":
        if isinstance(item, int):
            if item >= len(self) or item < -len(self):
                raise IndexError("Instances index out of range!")
            item = slice(item, None, len(self)) if item != -1 else slice(item, None)
        ret = Instances(self._image_size)
        for k, v in self._fields.items():
            if isinstance(v, list):
                if isinstance(item, torch.Tensor) and item.dtype == torch.bool:
                    v = [x for x, keep in zip(v, item.tolist()) if keep]
                elif isinstance(item, torch.Tensor):
                    v = [v[i] for i in item.tolist()]
                else:
                    v = v[item]
            else:
                v = v[item]
            ret.set(k, v)
        return ret

    def __len__(self) -> int:
        for v in self._fields.values():
            return len(v)
        return 0

    def __iter__(self):
        raise NotImplementedError("`Instances` object is not iterable!")

    @staticmethod
    def cat(instance_lists: List["Instances"]) -> "Instances":
        if len(instance_lists) == 0:
            raise ValueError("Instances.cat needs at least one Instances")
        if len(instance_lists) == 1:
            return instance_lists[0]
        image_size = instance_lists[0].image_size
        ret = Instances(image_size)
        for k in instance_lists[0]._fields.keys():
            values = [i.get(k) for i in instance_lists]
            v0 = values[0]
            if isinstance(v0, torch.Tensor):
                values = torch.cat(values, dim=0)
            elif isinstance(v0, list):
                values = list(itertools.chain(*values))
            elif hasattr(type(v0), "cat"):
                values = type(v0).cat(values)
            else:
                raise ValueError(f"Unsupported type {type(v0)} for concatenation")
            ret.set(k, values)
        return ret

    def __repr__(self) -> str:
        s = f"Instances(num_instances={len(self)}, image_height={self._image_size[0]}, image_width={self._image_size[1]}, fields=["
        s += ", ".join(f"{k}: {v}" for k, v in self._fields.items())
        return s + "])"
