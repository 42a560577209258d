"""Skipping unreadable training images (``dataloader.train.skip_bad_images=True``) without losing count.

A long run should not end hours in because one image of the dataset is truncated. With skipping on:

1. the mapper (:class:`~detrex.data.DetrDatasetMapper`) catches the image's
   :class:`~detrex.data.detection_utils.BadImageError` (missing, unreadable, truncated) or
   :class:`~detrex.data.detection_utils.SizeMismatchError` (decoded size differs from the json) through a
   `BadImagePolicy`, returns None (so :class:`~detrex.data.common.MapDataset` maps another, random sample in
   its place) and attaches a record of the skip to the next sample it returns, under `SKIPPED_KEY`; this
   works in DataLoader worker processes too, since the record travels with the batch;
2. the training loader (:class:`~detrex.data.build.ResumableTrainLoader`) takes the records out of every
   batch in the main process and hands them to a `BadImageTracker`, which logs each bad file ONCE (with its
   path and the reason), counts the skips, puts the count into the event storage (``bad_images_skipped`` in
   ``metrics.json``: skips so far, replaced samples) and stops the run with
   :class:`~detrex.data.detection_utils.BadImageError` (one line from ``tools/train_net.py``) once more distinct
   files are bad than ``max_bad_image_fraction`` of the dataset allows (at least one file is always
   tolerated). The tracker's state is checkpointed with the loader's.

Without skipping (the default) the first bad image stops training with a message naming the file. Find every
problem of a dataset before training with ``tools/check_dataset.py``.
"""

import logging
import math
from typing import Any, Dict, List, Optional, Tuple

from .detection_utils import BadImageError, SizeMismatchError

__all__ = ["SKIPPED_KEY", "BadImagePolicy", "BadImageTracker"]

logger = logging.getLogger(__name__)

#: key of a mapped sample that carries the skips made just before it: ``[(file_name, reason), ...]``
SKIPPED_KEY = "bad_images_skipped"

_ON_BAD_IMAGE = ("raise", "skip")


class BadImagePolicy:
    """What a mapper does with a bad image: ``"raise"`` (default) or ``"skip"`` (record and return None).

    ``handle(error, file_name)`` re-raises in "raise" mode, else records the skip; ``attach(sample)`` moves
    the pending records into the next sample the mapper returns. ``num_skipped`` counts this process's skips.
    """

    def __init__(self, on_bad_image: str = "raise"):
        self.mode = on_bad_image
        self.num_skipped = 0
        self._pending: List[Tuple[str, str]] = []

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in _ON_BAD_IMAGE:
            raise ValueError(f"on_bad_image must be 'raise' or 'skip', got {value!r}")
        self._mode = value

    def handle(self, error: Exception, file_name: Optional[str]) -> None:
        if self._mode == "raise" or not isinstance(error, (BadImageError, SizeMismatchError)):
            raise error
        self.num_skipped += 1
        self._pending.append((str(file_name), " ".join(str(error).split())))
        logger.debug(f"skipping a bad image ({self.num_skipped} skipped so far in this process): {error}")

    def attach(self, sample: Dict) -> Dict:
        if self._pending and isinstance(sample, dict):
            sample[SKIPPED_KEY] = self._pending
            self._pending = []
        return sample


class BadImageTracker:
    """Main-process accounting of skipped training images (see the module docstring).

    Args:
        dataset_size: images in the training set (the threshold's denominator).
        max_fraction: the run stops when more than ``max(1, floor(max_fraction * dataset_size))`` distinct
            files were bad.
    """

    def __init__(self, dataset_size: int, max_fraction: float = 0.01):
        if not 0.0 <= float(max_fraction) <= 1.0:
            raise ValueError(f"dataloader.train.max_bad_image_fraction must be in [0, 1], got {max_fraction!r}")
        self.dataset_size = int(dataset_size)
        self.max_fraction = float(max_fraction)
        self.allowed = max(1, math.floor(self.max_fraction * self.dataset_size))
        self.num_skips = 0
        self.files: Dict[str, int] = {}  # bad file -> times skipped

    def consume(self, batch) -> None:
        """Take the skip records out of a batch (list of sample dicts), log new files, count, check."""
        records = []
        for sample in batch if isinstance(batch, (list, tuple)) else ():
            if isinstance(sample, dict) and SKIPPED_KEY in sample:
                records.extend(sample.pop(SKIPPED_KEY))
        if not records:
            return
        for file_name, reason in records:
            self.num_skips += 1
            if file_name not in self.files:
                self.files[file_name] = 0
                logger.warning(f"Skipped a bad training image, replaced by another sample (logged once per file; "
                               f"{len(self.files)} bad file(s) so far): {reason}")
            self.files[file_name] += 1
        self._put_metric()
        if len(self.files) > self.allowed:
            first = list(self.files)[:5]
            raise BadImageError(
                f"{len(self.files)} distinct training images could not be used (of {self.dataset_size}), more "
                f"than dataloader.train.max_bad_image_fraction={self.max_fraction} allows ({self.allowed}); "
                f"first: {first}. Fix or remove them (tools/check_dataset.py lists every problem of a dataset), "
                "or raise dataloader.train.max_bad_image_fraction."
            )

    def _put_metric(self) -> None:
        from ..utils.events import get_event_storage, has_event_storage

        if has_event_storage():  # inside a training loop
            get_event_storage().put_scalar("bad_images_skipped", self.num_skips, smoothing_hint=False)

    def state_dict(self) -> Dict[str, Any]:
        return {"num_skips": self.num_skips, "files": dict(self.files)} if self.num_skips else {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.num_skips = int(state.get("num_skips", 0))
        self.files = dict(state.get("files", {}))
