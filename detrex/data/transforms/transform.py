"""Deterministic transforms applied to an image and its boxes (detectron2 / fvcore semantics).

Images are numpy arrays ``(H, W)`` or ``(H, W, C)``; uint8 images are resized with PIL (bit-identical to
detectron2). Coordinates are ``(N, 2)`` float arrays of absolute ``(x, y)`` pixels; boxes are ``(N, 4)``
absolute XYXY, transformed through their 4 corners and re-boxed (``apply_box``). Clipping to the image is the
caller's job (``detection_utils.transform_instance_annotations``).
"""

from typing import List

import numpy as np
import torch
from PIL import Image

__all__ = [
    "Transform",
    "TransformList",
    "NoOpTransform",
    "HFlipTransform",
    "VFlipTransform",
    "ResizeTransform",
    "CropTransform",
]


class Transform:
    """Base class: subclasses implement ``apply_image`` and ``apply_coords``."""

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self.apply_image(segmentation)

    def apply_box(self, box: np.ndarray) -> np.ndarray:
        """(N, 4) XYXY -> (N, 4) XYXY: transform the 4 corners, take their min/max."""
        idxs = np.array([(0, 1), (2, 1), (0, 3), (2, 3)]).flatten()
        # float64 like detectron2's float path (integer boxes would otherwise be truncated by a resize)
        coords = np.asarray(box, dtype=np.float64).reshape(-1, 4)[:, idxs].reshape(-1, 2)
        coords = self.apply_coords(coords).reshape((-1, 4, 2))
        minxy = coords.min(axis=1)
        maxxy = coords.max(axis=1)
        return np.concatenate((minxy, maxxy), axis=1)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class TransformList(Transform):
    """A sequence of transforms applied in order (each ``apply_*`` runs every transform's ``apply_*``)."""

    def __init__(self, transforms: List[Transform]):
        flat = []
        for t in transforms:
            if isinstance(t, TransformList):
                flat.extend(t.transforms)
            elif not isinstance(t, NoOpTransform):
                flat.append(t)
        self.transforms = flat

    def _apply(self, method: str, x):
        for t in self.transforms:
            x = getattr(t, method)(x)
        return x

    def apply_image(self, img):
        return self._apply("apply_image", img)

    def apply_coords(self, coords):
        return self._apply("apply_coords", coords)

    def apply_box(self, box):
        return self._apply("apply_box", box)

    def apply_segmentation(self, segmentation):
        return self._apply("apply_segmentation", segmentation)

    def __add__(self, other: "TransformList") -> "TransformList":
        others = other.transforms if isinstance(other, TransformList) else [other]
        return TransformList(self.transforms + others)

    def __len__(self) -> int:
        return len(self.transforms)

    def __getitem__(self, idx):
        return self.transforms[idx]

    def __repr__(self) -> str:
        return "TransformList[{}]".format(", ".join(repr(t) for t in self.transforms))


class NoOpTransform(Transform):
    def apply_image(self, img):
        return img

    def apply_coords(self, coords):
        return coords


class HFlipTransform(Transform):
    """Horizontal flip of an image of width ``width``: x -> width - x."""

    def __init__(self, width: int):
        self.width = width

    def apply_image(self, img):
        if img.ndim <= 3:  # HxW or HxWxC
            return np.flip(img, axis=1)
        return np.flip(img, axis=-2)  # NxHxWxC

    def apply_coords(self, coords):
        coords[:, 0] = self.width - coords[:, 0]
        return coords


class VFlipTransform(Transform):
    """Vertical flip of an image of height ``height``: y -> height - y."""

    def __init__(self, height: int):
        self.height = height

    def apply_image(self, img):
        if img.ndim <= 3:
            return np.flip(img, axis=0)
        return np.flip(img, axis=-3)

    def apply_coords(self, coords):
        coords[:, 1] = self.height - coords[:, 1]
        return coords


class ResizeTransform(Transform):
    """Resize (h, w) -> (new_h, new_w). uint8 images use PIL (``interp``, default BILINEAR) like detectron2;
    float images use ``torch.nn.functional.interpolate`` (bilinear, ``align_corners=False``)."""

    def __init__(self, h: int, w: int, new_h: int, new_w: int, interp=None):
        if interp is None:
            interp = Image.BILINEAR
        self.h, self.w, self.new_h, self.new_w, self.interp = h, w, new_h, new_w, interp

    def apply_image(self, img, interp=None):
        if img.shape[:2] != (self.h, self.w):
            raise ValueError(f"ResizeTransform expected an image of size {(self.h, self.w)}, got {img.shape[:2]}")
        if len(img.shape) > 4:
            raise ValueError(f"ResizeTransform supports at most 4 dims, got {img.shape}")
        interp_method = interp if interp is not None else self.interp
        if img.dtype == np.uint8:
            if len(img.shape) > 2 and img.shape[2] == 1:
                pil_image = Image.fromarray(img[:, :, 0])
            else:
                pil_image = Image.fromarray(img)
            pil_image = pil_image.resize((self.new_w, self.new_h), interp_method)
            ret = np.asarray(pil_image)
            if len(img.shape) > 2 and img.shape[2] == 1:
                ret = np.expand_dims(ret, -1)
            return ret
        # float path: torch interpolate, (H, W[, C]) -> NCHW and back
        modes = {Image.NEAREST: "nearest", Image.BILINEAR: "bilinear", Image.BICUBIC: "bicubic"}
        mode = modes[interp_method]
        shape = list(img.shape)
        shape_4d = shape[:2] + [1] * (4 - len(shape)) + shape[2:]
        t = torch.from_numpy(np.ascontiguousarray(img)).view(shape_4d).permute(2, 3, 0, 1)  # hw(c) -> nchw
        kw = {"align_corners": False} if mode != "nearest" else {}
        t = torch.nn.functional.interpolate(t, (self.new_h, self.new_w), mode=mode, **kw)
        shape[:2] = (self.new_h, self.new_w)
        return t.permute(2, 3, 0, 1).reshape(shape).numpy()

    def apply_coords(self, coords):
        coords[:, 0] = coords[:, 0] * (self.new_w * 1.0 / self.w)
        coords[:, 1] = coords[:, 1] * (self.new_h * 1.0 / self.h)
        return coords

    def apply_segmentation(self, segmentation):
        return self.apply_image(segmentation, interp=Image.NEAREST)


class CropTransform(Transform):
    """Crop the window ``[x0, x0 + w) x [y0, y0 + h)``; coordinates shift by (-x0, -y0)."""

    def __init__(self, x0: int, y0: int, w: int, h: int):
        self.x0, self.y0, self.w, self.h = x0, y0, w, h

    def apply_image(self, img):
        if len(img.shape) <= 3:
            return img[self.y0 : self.y0 + self.h, self.x0 : self.x0 + self.w]
        return img[..., self.y0 : self.y0 + self.h, self.x0 : self.x0 + self.w, :]

    def apply_coords(self, coords):
        coords[:, 0] -= self.x0
        coords[:, 1] -= self.y0
        return coords
