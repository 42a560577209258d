"""Per-image helpers of the data path (detectron2 ``data.detection_utils`` names and semantics).

- :func:`read_image`: PIL decode, EXIF orientation applied (``ImageOps.exif_transpose``), HWC uint8 numpy in the
  requested format ("RGB", "BGR", "L", ...). A missing or undecodable file raises :class:`BadImageError`
  naming the file.
- :func:`check_image_size`: the decoded size must equal the dict's ``width``/``height``.
- :func:`transform_instance_annotations`: XYWH/XYXY box -> XYXY, transformed by its corners, clipped to the
  augmented image ``[0, W] x [0, H]``.
- :func:`annotations_to_instances`: ``Instances(gt_boxes=Boxes(XYXY abs), gt_classes=int64)``.
- :func:`filter_empty_instances`: drop instances whose box width or height is ``<= 1e-5``.
"""

import logging
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..structures import Boxes, BoxMode, Instances

__all__ = [
    "BadImageError",
    "SizeMismatchError",
    "read_image",
    "convert_PIL_to_numpy",
    "check_image_size",
    "transform_instance_annotations",
    "annotations_to_instances",
    "filter_empty_instances",
]

logger = logging.getLogger(__name__)


class BadImageError(OSError):
    """An image file that is missing, unreadable or cannot be decoded."""


class SizeMismatchError(ValueError):
    """The decoded image size differs from the ``width``/``height`` recorded in the dataset dict."""


def convert_PIL_to_numpy(image: Image.Image, format: Optional[str]) -> np.ndarray:
    """PIL image -> numpy HWC (or HW) array in ``format`` ("RGB", "BGR", "L", or None to keep the mode)."""
    if format is not None:
        conversion_format = "RGB" if format in ("BGR", "YUV-BT.601") else format
        image = image.convert(conversion_format)
    image = np.asarray(image)
    if format == "L":
        image = np.expand_dims(image, -1)
    elif format == "BGR":
        image = image[:, :, ::-1]
    elif format == "YUV-BT.601":
        image = image / 255.0
        image = np.dot(
            image, np.array([[0.299, 0.587, 0.114], [-0.14713, -0.28886, 0.436], [0.615, -0.51499, -0.10001]]).T
        )
    return image


def read_image(file_name: str, format: Optional[str] = None) -> np.ndarray:
    """Read an image file as an (H, W, C) numpy array (uint8 for RGB/BGR/L), EXIF orientation applied.

    Raises:
        BadImageError: the file does not exist, cannot be opened, or is not a decodable image.
    """
    from ..utils.file_io import PathManager

    try:
        with PathManager.open(file_name, "rb") as f:
            image = Image.open(f)
            image.load()  # decode now, inside the try, so truncated files fail here
            image = ImageOps.exif_transpose(image)
            return convert_PIL_to_numpy(image, format)
    except FileNotFoundError as e:
        raise BadImageError(f"Image file not found: '{file_name}'. Check the dataset's image_root.") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadImageError(f"Cannot read image '{file_name}' (corrupt or not an image): {e}") from e


def check_image_size(dataset_dict: Dict, image: np.ndarray) -> None:
    """Raise :class:`SizeMismatchError` if ``image`` (HWC) does not match the dict's width/height; fill them in
    when the dict has none."""
    if "width" in dataset_dict or "height" in dataset_dict:
        image_wh = (image.shape[1], image.shape[0])
        expected_wh = (dataset_dict["width"], dataset_dict["height"])
        if image_wh != expected_wh:
            raise SizeMismatchError(
                "Mismatched image shape{}, got {}, expect {}. Please check the width/height in your annotation.".format(
                    " for image " + dataset_dict["file_name"] if "file_name" in dataset_dict else "",
                    image_wh,
                    expected_wh,
                )
            )
    if "width" not in dataset_dict:
        dataset_dict["width"] = image.shape[1]
    if "height" not in dataset_dict:
        dataset_dict["height"] = image.shape[0]


def _box_to_xyxy(bbox, mode) -> List[float]:
    """One box -> XYXY list. Mirrors detectron2's ``BoxMode.convert`` on a list, which goes through
    ``torch.tensor(box)`` (float32 for float inputs), so results are bit-identical to detectron2's."""
    mode = BoxMode(int(mode))
    if mode == BoxMode.XYXY_ABS:
        return list(bbox)
    if mode != BoxMode.XYWH_ABS:
        raise ValueError(f"Unsupported bbox_mode {mode}; only XYXY_ABS and XYWH_ABS are supported")
    arr = torch.tensor(list(bbox))
    arr[2] += arr[0]
    arr[3] += arr[1]
    return arr.tolist()


def transform_instance_annotations(
    annotation: Dict, transforms, image_size: Tuple[int, int], *, keypoint_hflip_indices=None
) -> Dict:
    """Apply ``transforms`` to one annotation's box, in place; the box becomes XYXY_ABS clipped to
    ``image_size = (h, w)`` of the transformed image. Segmentation/keypoints are not supported (DETR path) and
    are removed."""
    if isinstance(transforms, (tuple, list)):
        from .transforms import TransformList

        transforms = TransformList(transforms)
    bbox = _box_to_xyxy(annotation["bbox"], annotation["bbox_mode"])
    bbox = transforms.apply_box(np.array([bbox]))[0].clip(min=0)
    annotation["bbox"] = np.minimum(bbox, list(image_size + image_size)[::-1])
    annotation["bbox_mode"] = BoxMode.XYXY_ABS
    if "segmentation" in annotation:
        raise NotImplementedError("transform_instance_annotations: masks are not supported (mask_on=False)")
    annotation.pop("keypoints", None)
    return annotation


def annotations_to_instances(annos: List[Dict], image_size: Tuple[int, int], mask_format: str = "polygon") -> Instances:
    """Annotations (after :func:`transform_instance_annotations`) -> ``Instances(image_size)`` with
    ``gt_boxes`` (Boxes, XYXY absolute pixels of the augmented image) and ``gt_classes`` (int64 contiguous ids)."""
    boxes = np.array([_box_to_xyxy(obj["bbox"], obj["bbox_mode"]) for obj in annos]) if len(annos) else np.zeros((0, 4))
    target = Instances(image_size)
    target.gt_boxes = Boxes(boxes)
    target.gt_classes = torch.tensor([int(obj["category_id"]) for obj in annos], dtype=torch.int64)
    return target


def filter_empty_instances(
    instances: Instances,
    by_box: bool = True,
    by_mask: bool = True,
    box_threshold: float = 1e-5,
    return_mask: bool = False,
):
    """Keep instances whose ``gt_boxes`` width and height are both ``> box_threshold``."""
    r = []
    if by_box:
        r.append(instances.gt_boxes.nonempty(threshold=box_threshold))
    if not r:
        return (instances, None) if return_mask else instances
    m = r[0]
    for x in r[1:]:
        m = m & x
    if return_mask:
        return instances[m], m
    return instances[m]
