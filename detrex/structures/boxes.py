"""Axis-aligned boxes: `BoxMode` conversions and the `Boxes` container (detectron2 names and semantics)."""
from enum import IntEnum
from typing import List, Tuple, Union

import numpy as np
import torch

__all__ = ["BoxMode", "Boxes", "pairwise_iou"]


class BoxMode(IntEnum):
    """How 4 box numbers are laid out. Absolute modes are in pixels; relative modes are in [0, 1]."""

    XYXY_ABS = 0  #: (x0, y0, x1, y1), absolute pixels
    XYWH_ABS = 1  #: (x0, y0, w, h), absolute pixels (COCO json)
    XYXY_REL = 2
    XYWH_REL = 3

    @staticmethod
    def convert(box, from_mode: "BoxMode", to_mode: "BoxMode"):
        """Convert one box (list/tuple of 4) or an (N, 4) array/tensor between XYXY_ABS and XYWH_ABS.

        The input type is preserved. Relative modes are not supported (no image size here).
        """
        if from_mode == to_mode:
            return box
        supported = {BoxMode.XYXY_ABS, BoxMode.XYWH_ABS}
        if from_mode not in supported or to_mode not in supported:
            raise NotImplementedError(f"BoxMode.convert supports only XYXY_ABS <-> XYWH_ABS, got {from_mode} -> {to_mode}")
        original_type = type(box)
        single = isinstance(box, (list, tuple))
        if single:
            if len(box) != 4:
                raise ValueError(f"A single box must have 4 numbers, got {box!r}")
            arr = torch.tensor(box, dtype=torch.float64).view(1, 4)
        elif isinstance(box, np.ndarray):
            arr = torch.from_numpy(np.asarray(box)).clone()
        else:
            arr = box.clone()
        if from_mode == BoxMode.XYWH_ABS:
            arr[:, 2] += arr[:, 0]
            arr[:, 3] += arr[:, 1]
        else:
            arr[:, 2] -= arr[:, 0]
            arr[:, 3] -= arr[:, 1]
        if single:
            return original_type(arr.flatten().tolist())
        if isinstance(box, np.ndarray):
            return arr.numpy()
        return arr


class Boxes:
    """A list of N boxes stored as an (N, 4) float tensor in absolute XYXY pixels.

    Supports the detectron2 API the DETR models use: `tensor`, `area`, `clip`, `nonempty`, `scale`,
    indexing, `len`, `to`, `cat`.
    """

    def __init__(self, tensor: Union[torch.Tensor, np.ndarray, List]):
        if not isinstance(tensor, torch.Tensor):
            tensor = torch.as_tensor(np.asarray(tensor), dtype=torch.float32)
        else:
            tensor = tensor.to(torch.float32)
        if tensor.numel() == 0:
            tensor = tensor.reshape(-1, 4)
        if tensor.dim() != 2 or tensor.size(-1) != 4:
            raise ValueError(f"Boxes expects an (N, 4) tensor, got shape {tuple(tensor.shape)}")
        self.tensor = tensor

    def clone(self) -> "Boxes":
        return Boxes(self.tensor.clone())

    def to(self, *args, **kwargs) -> "Boxes":
        return Boxes(self.tensor.to(*args, **kwargs))

    def pin_memory(self) -> "Boxes":
        """A copy in page-locked memory (``DataLoader(pin_memory=True)`` calls this), for non-blocking copies."""
        return Boxes(self.tensor.pin_memory())

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def area(self) -> torch.Tensor:
        b = self.tensor
        return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])

    def clip(self, box_size: Tuple[int, int]) -> None:
        """Clip in place to an image of (height, width)."""
        h, w = box_size
        self.tensor[:, 0].clamp_(min=0, max=w)
        self.tensor[:, 1].clamp_(min=0, max=h)
        self.tensor[:, 2].clamp_(min=0, max=w)
        self.tensor[:, 3].clamp_(min=0, max=h)

    def nonempty(self, threshold: float = 0.0) -> torch.Tensor:
        """(N,) bool: True where width and height are both > threshold."""
        b = self.tensor
        return ((b[:, 2] - b[:, 0]) > threshold) & ((b[:, 3] - b[:, 1]) > threshold)

    def scale(self, scale_x: float, scale_y: float) -> None:
        """Scale coordinates in place (x by scale_x, y by scale_y)."""
        self.tensor[:, 0::2] *= scale_x
        self.tensor[:, 1::2] *= scale_y

    def get_centers(self) -> torch.Tensor:
        return (self.tensor[:, :2] + self.tensor[:, 2:]) / 2

    def __getitem__(self, item) -> "Boxes":
        if isinstance(item, int):
            return Boxes(self.tensor[item].view(1, -1))
        b = self.tensor[item]
        return Boxes(b.reshape(-1, 4))

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __iter__(self):
        yield from self.tensor

    def __repr__(self) -> str:
        return f"Boxes({self.tensor})"

    @classmethod
    def cat(cls, boxes_list: List["Boxes"]) -> "Boxes":
        if len(boxes_list) == 0:
            return cls(torch.empty(0, 4))
        return cls(torch.cat([b.tensor for b in boxes_list], dim=0))


def pairwise_iou(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """(N, M) IoU between two sets of absolute XYXY boxes."""
    a, b = boxes1.tensor, boxes2.tensor
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    union = boxes1.area()[:, None] + boxes2.area()[None, :] - inter
    return torch.where(inter > 0, inter / union, torch.zeros_like(inter))
