"""`DetrDatasetMapper`: dataset dict -> model input, with DETR's augmentation (follows detrex's mapper).

Input: a detectron2 dataset dict (``file_name``, ``height``, ``width``, ``image_id``, ``annotations`` with
XYWH_ABS boxes and contiguous ``category_id``). Output::

    {"image": uint8 tensor (3, H', W') RGB (augmented size),
     "instances": Instances((H', W'), gt_boxes=Boxes (N, 4) XYXY absolute augmented pixels, gt_classes int64 (N,)),
     "height": H, "width": W,          # ORIGINAL image size (used to rescale predictions)
     "file_name": ..., "image_id": ...}

Training (``is_train=True``): per image ``np.random.rand() > 0.5`` picks ``augmentation``, else
``augmentation_with_crop`` (when given); crowd annotations are dropped; boxes are transformed, clipped, and
instances with width or height ``<= 1e-5`` removed. Test: annotations are dropped (``keep_annotations_in_test``
keeps them as ``instances``, e.g. for visualizing ground truth).

Bad images: by default a missing/corrupt image raises :class:`~detrex.data.detection_utils.BadImageError`
naming the file (an image whose size differs from the dict's: ``SizeMismatchError``). With
``on_bad_image="skip"`` (set by ``dataloader.train.skip_bad_images=True``) the mapper counts the skip
(``mapper.num_skipped``) and returns None, so :class:`~detrex.data.common.MapDataset` retries another image; the
skip is recorded in the next sample it returns, for the training loader to log and count
(:mod:`detrex.data.bad_images`). Use "skip" for training only: at test time a retry would evaluate a different
image in its place.
"""

import copy
import logging
from typing import Dict, List, Optional

import numpy as np
import torch

from . import detection_utils as utils
from . import transforms as T
from .bad_images import BadImagePolicy

__all__ = ["DetrDatasetMapper"]

logger = logging.getLogger(__name__)


class DetrDatasetMapper:
    """Map one dataset dict to the DETR model input (see module docstring).

    Args:
        augmentation: list of augmentations/transforms (the plain branch).
        augmentation_with_crop: optional second list (the crop branch), chosen with probability 0.5 per image.
        is_train: training mode (annotations become ``instances``) or test mode (annotations dropped).
        mask_on: not supported (the DETR path is boxes only); must be False.
        img_format: image format passed to :func:`read_image` ("RGB" for all DETR configs).
        keep_annotations_in_test: in test mode, still produce ``instances`` from the annotations.
        on_bad_image: ``"raise"`` (default) or ``"skip"`` (log, count, return None).
    """

    def __init__(
        self,
        augmentation: List,
        augmentation_with_crop: Optional[List] = None,
        is_train: bool = True,
        mask_on: bool = False,
        img_format: str = "RGB",
        keep_annotations_in_test: bool = False,
        on_bad_image: str = "raise",
    ):
        if mask_on:
            raise NotImplementedError("DetrDatasetMapper: mask_on=True is not supported (boxes only).")
        self._bad_images = BadImagePolicy(on_bad_image)
        self.augmentation = list(augmentation)
        self.augmentation_with_crop = list(augmentation_with_crop) if augmentation_with_crop is not None else None
        self.is_train = is_train
        self.mask_on = mask_on
        self.img_format = img_format
        self.keep_annotations_in_test = keep_annotations_in_test
        mode = "training" if is_train else "inference"
        logger.info(
            f"[DetrDatasetMapper] Augmentations used in {mode}: {self.augmentation}, crop: {self.augmentation_with_crop}"
        )

    @property
    def on_bad_image(self) -> str:
        """``"raise"`` or ``"skip"`` (see the module docstring)."""
        return self._bad_images.mode

    @on_bad_image.setter
    def on_bad_image(self, value: str) -> None:
        self._bad_images.mode = value

    @property
    def num_skipped(self) -> int:
        """Images skipped by this mapper in this process."""
        return self._bad_images.num_skipped

    def __call__(self, dataset_dict: Dict) -> Optional[Dict]:
        dataset_dict = copy.deepcopy(dataset_dict)  # it will be modified below
        try:
            image = utils.read_image(dataset_dict["file_name"], format=self.img_format)
            utils.check_image_size(dataset_dict, image)
        except (utils.BadImageError, utils.SizeMismatchError) as e:
            self._bad_images.handle(e, dataset_dict.get("file_name"))
            return None
        return self._bad_images.attach(self._map(dataset_dict, image))

    def _map(self, dataset_dict: Dict, image) -> Dict:
        """Augment the decoded ``image`` (H, W, 3) and its annotations (see the module docstring)."""
        if self.augmentation_with_crop is None:
            image, transforms = T.apply_transform_gens(self.augmentation, image)
        elif np.random.rand() > 0.5:
            image, transforms = T.apply_transform_gens(self.augmentation, image)
        else:
            image, transforms = T.apply_transform_gens(self.augmentation_with_crop, image)

        image_shape = image.shape[:2]  # h, w after augmentation
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))

        if not self.is_train and not self.keep_annotations_in_test:
            dataset_dict.pop("annotations", None)
            return dataset_dict

        if "annotations" in dataset_dict:
            for anno in dataset_dict["annotations"]:
                anno.pop("segmentation", None)
                anno.pop("keypoints", None)
            annos = [
                utils.transform_instance_annotations(obj, transforms, image_shape)
                for obj in dataset_dict.pop("annotations")
                if obj.get("iscrowd", 0) == 0
            ]
            instances = utils.annotations_to_instances(annos, image_shape)
            dataset_dict["instances"] = utils.filter_empty_instances(instances)
        return dataset_dict
