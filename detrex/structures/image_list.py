"""`ImageList`: a batch of differently sized images padded into one tensor (detectron2 semantics)."""
import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["ImageList"]


class ImageList:
    """Images of different sizes stored as one padded tensor.

    Attributes:
        tensor: (B, C, H, W), images at the top-left, padded at the bottom/right with `pad_value`.
        image_sizes: list of B (h, w) tuples, the unpadded size of each image.
    """

    def __init__(self, tensor: torch.Tensor, image_sizes: List[Tuple[int, int]]):
        self.tensor = tensor
        self.image_sizes = image_sizes

    def __len__(self) -> int:
        return len(self.image_sizes)

    def __getitem__(self, idx) -> torch.Tensor:
        """The idx-th image without padding, (C, h, w)."""
        h, w = self.image_sizes[idx]
        return self.tensor[idx, ..., :h, :w]

    def to(self, *args, **kwargs) -> "ImageList":
        return ImageList(self.tensor.to(*args, **kwargs), self.image_sizes)

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def padding_mask(self) -> torch.Tensor:
        """(B, H, W) bool, True on padded pixels (outside each image's top-left (h, w) region)."""
        b, _, h, w = self.tensor.shape
        mask = torch.ones((b, h, w), dtype=torch.bool, device=self.tensor.device)
        for i, (ih, iw) in enumerate(self.image_sizes):
            mask[i, :ih, :iw] = False
        return mask

    @staticmethod
    def from_tensors(
        tensors: List[torch.Tensor],
        size_divisibility: int = 0,
        pad_value: float = 0.0,
        padding_constraints: Optional[dict] = None,
    ) -> "ImageList":
        """Pad a list of (C, h, w) (or (h, w)) tensors to the batch's max size, rounded up to
        `size_divisibility` when > 1. `padding_constraints` may hold `size_divisibility` and
        `square_size` as in detectron2."""
        if len(tensors) == 0:
            raise ValueError("ImageList.from_tensors needs at least one image")
        for t in tensors:
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"ImageList.from_tensors expects tensors, got {type(t)}")
            if t.shape[:-2] != tensors[0].shape[:-2]:
                raise ValueError(f"All images must have the same leading dims, got {t.shape} and {tensors[0].shape}")
        image_sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
        max_h = max(s[0] for s in image_sizes)
        max_w = max(s[1] for s in image_sizes)
        if padding_constraints is not None:
            square = padding_constraints.get("square_size", 0)
            if square > 0:
                max_h = max_w = square
            size_divisibility = padding_constraints.get("size_divisibility", size_divisibility)
        if size_divisibility > 1:
            max_h = int(math.ceil(max_h / size_divisibility) * size_divisibility)
            max_w = int(math.ceil(max_w / size_divisibility) * size_divisibility)
        if len(tensors) == 1:
            h, w = image_sizes[0]
            batched = F.pad(tensors[0], [0, max_w - w, 0, max_h - h], value=pad_value).unsqueeze(0)
        else:
            shape = (len(tensors),) + tuple(tensors[0].shape[:-2]) + (max_h, max_w)
            batched = tensors[0].new_full(shape, pad_value)
            for i, t in enumerate(tensors):
                batched[i, ..., : t.shape[-2], : t.shape[-1]].copy_(t)
        return ImageList(batched.contiguous(), image_sizes)
