"""Random augmentations that produce deterministic :mod:`.transform` objects (detectron2 semantics).

Randomness comes from numpy's global RNG (``np.random``), exactly as in detectron2, so ``np.random.seed(s)``
makes a data mapper reproducible and the sequence of draws matches detectron2 call for call:

- ``RandomFlip``: one ``np.random.uniform(0, 1)`` draw; flip when it is ``< prob``.
- ``ResizeShortestEdge``: ``"range"`` draws ``np.random.randint(min, max + 1)``, ``"choice"`` draws
  ``np.random.choice(sizes)``; output size from :meth:`ResizeShortestEdge.get_output_shape` (short side to
  ``size``, then scaled down if the long side exceeds ``max_size``, each side rounded with ``int(x + 0.5)``).
- ``RandomCrop``: crop size per ``crop_type`` (``"absolute_range"``: integer height in
  ``[min(H, a), min(H, b)]`` then width likewise), then top-left ``y0 = randint(H - ch + 1)``,
  ``x0 = randint(W - cw + 1)``.
"""

import sys
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from .transform import (
    CropTransform,
    HFlipTransform,
    NoOpTransform,
    ResizeTransform,
    Transform,
    TransformList,
    VFlipTransform,
)

__all__ = [
    "Augmentation",
    "AugInput",
    "AugmentationList",
    "RandomFlip",
    "ResizeShortestEdge",
    "RandomCrop",
    "apply_augmentations",
    "apply_transform_gens",
]


class Augmentation:
    """Base class: ``get_transform(image) -> Transform`` (may draw from ``np.random``)."""

    def get_transform(self, image: np.ndarray) -> Transform:
        raise NotImplementedError

    def __call__(self, aug_input: "AugInput") -> Transform:
        tfm = self.get_transform(aug_input.image)
        if not isinstance(tfm, Transform):
            raise TypeError(f"{type(self).__name__}.get_transform must return a Transform, got {type(tfm)}")
        aug_input.transform(tfm)
        return tfm

    def _rand_range(self, low=1.0, high=None, size=None):
        """Uniform float in [low, high) (or [0, low) with one argument), like detectron2."""
        if high is None:
            low, high = 0, low
        if size is None:
            size = []
        return np.random.uniform(low, high, size)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class _TransformToAug(Augmentation):
    """Wraps a fixed Transform so it can be used in an augmentation list."""

    def __init__(self, tfm: Transform):
        self.tfm = tfm

    def get_transform(self, image):
        return self.tfm


def _as_aug(x) -> Augmentation:
    if isinstance(x, Augmentation):
        return x
    if isinstance(x, Transform):
        return _TransformToAug(x)
    raise TypeError(f"Expected an Augmentation or a Transform, got {type(x)}: {x!r}")


class AugInput:
    """The inputs an augmentation list transforms in place: ``image`` (HWC numpy), optional ``boxes``
    ((N, 4) absolute XYXY) and ``sem_seg`` (HW)."""

    def __init__(self, image: np.ndarray, *, boxes: Optional[np.ndarray] = None, sem_seg: Optional[np.ndarray] = None):
        if not isinstance(image, np.ndarray):
            raise TypeError(f"AugInput needs a numpy image, got {type(image)}")
        if image.ndim not in (2, 3):
            raise ValueError(f"AugInput needs an (H, W) or (H, W, C) image, got shape {image.shape}")
        self.image = image
        self.boxes = boxes
        self.sem_seg = sem_seg

    def transform(self, tfm: Transform) -> None:
        self.image = tfm.apply_image(self.image)
        if self.boxes is not None:
            self.boxes = tfm.apply_box(self.boxes)
        if self.sem_seg is not None:
            self.sem_seg = tfm.apply_segmentation(self.sem_seg)

    def apply_augmentations(self, augmentations: Sequence[Union[Augmentation, Transform]]) -> TransformList:
        return AugmentationList(augmentations)(self)


class AugmentationList(Augmentation):
    """Apply augmentations in sequence; each sees the output of the previous one."""

    def __init__(self, augs: Sequence[Union[Augmentation, Transform]]):
        self.augs = [_as_aug(a) for a in augs]

    def __call__(self, aug_input: AugInput) -> TransformList:
        return TransformList([a(aug_input) for a in self.augs])

    def __repr__(self) -> str:
        return "AugmentationList[{}]".format(", ".join(repr(a) for a in self.augs))


class RandomFlip(Augmentation):
    """Flip with probability ``prob``, horizontally (default) or vertically."""

    def __init__(self, prob: float = 0.5, *, horizontal: bool = True, vertical: bool = False):
        if horizontal and vertical:
            raise ValueError("RandomFlip: cannot flip both horizontally and vertically; use two RandomFlip.")
        if not horizontal and not vertical:
            raise ValueError("RandomFlip: at least one of horizontal or vertical has to be True.")
        self.prob, self.horizontal, self.vertical = prob, horizontal, vertical

    def get_transform(self, image):
        h, w = image.shape[:2]
        do = self._rand_range() < self.prob
        if not do:
            return NoOpTransform()
        return HFlipTransform(w) if self.horizontal else VFlipTransform(h)


class ResizeShortestEdge(Augmentation):
    """Resize so the short side is a sampled ``short_edge_length`` and the long side is at most ``max_size``.

    Args:
        short_edge_length: an int, or a sequence: ``(min, max)`` for ``sample_style="range"``, candidate sizes
            for ``"choice"``. A sampled size of 0 means no resize.
        max_size: cap on the long side after resizing (default: no cap).
        sample_style: ``"range"`` (default) or ``"choice"``.
        interp: PIL interpolation for uint8 images (default ``Image.BILINEAR``).
    """

    def __init__(self, short_edge_length, max_size: int = sys.maxsize, sample_style: str = "range", interp=None):
        if sample_style not in ("range", "choice"):
            raise ValueError(f"ResizeShortestEdge: sample_style must be 'range' or 'choice', got {sample_style!r}")
        self.is_range = sample_style == "range"
        if isinstance(short_edge_length, (int, np.integer)):
            short_edge_length = (int(short_edge_length), int(short_edge_length))
        short_edge_length = tuple(int(s) for s in short_edge_length)
        if self.is_range and len(short_edge_length) != 2:
            raise ValueError(
                f"ResizeShortestEdge: short_edge_length must be two values (min, max) for 'range', got {short_edge_length}"
            )
        self.short_edge_length = short_edge_length
        self.max_size = max_size
        self.sample_style = sample_style
        self.interp = Image.BILINEAR if interp is None else interp

    def get_transform(self, image):
        h, w = image.shape[:2]
        if self.is_range:
            size = np.random.randint(self.short_edge_length[0], self.short_edge_length[1] + 1)
        else:
            size = np.random.choice(self.short_edge_length)
        if size == 0:
            return NoOpTransform()
        newh, neww = ResizeShortestEdge.get_output_shape(h, w, size, self.max_size)
        return ResizeTransform(h, w, newh, neww, self.interp)

    @staticmethod
    def get_output_shape(oldh: int, oldw: int, short_edge_length: int, max_size: int) -> Tuple[int, int]:
        """(new_h, new_w): short side to ``short_edge_length``, long side capped at ``max_size``, ``int(x + .5)``."""
        h, w = oldh, oldw
        size = short_edge_length * 1.0
        scale = size / min(h, w)
        if h < w:
            newh, neww = size, scale * w
        else:
            newh, neww = scale * h, size
        if max(newh, neww) > max_size:
            scale = max_size * 1.0 / max(newh, neww)
            newh = newh * scale
            neww = neww * scale
        neww = int(neww + 0.5)
        newh = int(newh + 0.5)
        return (newh, neww)


class RandomCrop(Augmentation):
    """Crop a random window. ``crop_type``:

    - ``"relative"``: ``crop_size = (fh, fw)`` fractions of (H, W);
    - ``"relative_range"``: fractions uniformly in ``[crop_size, 1]``;
    - ``"absolute"``: ``crop_size = (h, w)`` pixels (capped at the image size);
    - ``"absolute_range"``: ``crop_size = (min, max)`` pixels; height and width drawn independently as integers
      in ``[min(S, min), min(S, max)]`` for image side ``S`` (DETR uses ``(384, 600)``).
    """

    def __init__(self, crop_type: str, crop_size):
        if crop_type not in ("relative_range", "relative", "absolute", "absolute_range"):
            raise ValueError(f"RandomCrop: unknown crop_type {crop_type!r}")
        self.crop_type = crop_type
        self.crop_size = tuple(crop_size)

    def get_transform(self, image):
        h, w = image.shape[:2]
        croph, cropw = self.get_crop_size((h, w))
        if not (h >= croph and w >= cropw):
            raise ValueError(f"RandomCrop: crop size {(croph, cropw)} larger than image {(h, w)}")
        h0 = np.random.randint(h - croph + 1)
        w0 = np.random.randint(w - cropw + 1)
        return CropTransform(w0, h0, cropw, croph)

    def get_crop_size(self, image_size: Tuple[int, int]) -> Tuple[int, int]:
        h, w = image_size
        if self.crop_type == "relative":
            ch, cw = self.crop_size
            return int(h * ch + 0.5), int(w * cw + 0.5)
        if self.crop_type == "relative_range":
            crop_size = np.asarray(self.crop_size, dtype=np.float32)
            ch, cw = crop_size + np.random.rand(2) * (1 - crop_size)
            return int(h * ch + 0.5), int(w * cw + 0.5)
        if self.crop_type == "absolute":
            return (min(self.crop_size[0], h), min(self.crop_size[1], w))
        # absolute_range
        if self.crop_size[0] > self.crop_size[1]:
            raise ValueError(f"RandomCrop('absolute_range', {self.crop_size}): min must be <= max")
        ch = np.random.randint(min(h, self.crop_size[0]), min(h, self.crop_size[1]) + 1)
        cw = np.random.randint(min(w, self.crop_size[0]), min(w, self.crop_size[1]) + 1)
        return ch, cw


def apply_augmentations(augmentations: Sequence[Union[Augmentation, Transform]], inputs):
    """Apply ``augmentations`` to ``inputs`` (a numpy image or an :class:`AugInput`).

    Returns ``(image, transforms)`` for an image, ``(aug_input, transforms)`` for an AugInput.
    """
    if isinstance(inputs, np.ndarray):
        aug_input = AugInput(inputs)
        tfms = aug_input.apply_augmentations(augmentations)
        return aug_input.image, tfms
    tfms = inputs.apply_augmentations(augmentations)
    return inputs, tfms


def apply_transform_gens(transform_gens: List[Union[Augmentation, Transform]], img):
    """detectron2's older name for :func:`apply_augmentations` (used by DETR mappers and KS-DETR)."""
    return apply_augmentations(transform_gens, img)
