"""Dataset-dict resolution and the train/test data loaders (detectron2 semantics).

Training: ``DatasetFromList`` (serialized) -> ``MapDataset(mapper)`` -> infinite ``TrainingSampler`` (sharded
across processes) -> ``ToIterableDataset`` (sharded across DataLoader workers) -> DataLoader yielding single
dicts -> ``AspectRatioGroupedDataset`` (batches of ``total_batch_size // world_size`` dicts of the same
orientation). Test: ``InferenceSampler`` (contiguous shard per process), batch size 1 by default. Batches are
``list[dict]`` (no tensor collation).
"""

import itertools
import logging
import operator
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.utils.data as torchdata

from ..utils import comm
from .bad_images import BadImageTracker
from .catalog import DatasetCatalog, DatasetNotRegisteredError, MetadataCatalog
from .common import AspectRatioGroupedDataset, DatasetFromList, MapDataset, ToIterableDataset, TrainBatchStream
from .samplers import InferenceSampler, TrainingSampler

__all__ = [
    "DatasetNotRegisteredError",
    "EmptyDatasetError",
    "get_detection_dataset_dicts",
    "build_detection_train_loader",
    "build_detection_test_loader",
    "build_batch_data_loader",
    "ResumableTrainLoader",
    "trivial_batch_collator",
    "worker_init_reset_seed",
    "filter_images_with_only_crowd_annotations",
    "print_instances_class_histogram",
]

logger = logging.getLogger(__name__)


class EmptyDatasetError(ValueError):
    """A dataset with no images (before or after filtering)."""


def filter_images_with_only_crowd_annotations(dataset_dicts: List[Dict]) -> List[Dict]:
    """Keep images with at least one non-crowd annotation (training)."""
    num_before = len(dataset_dicts)

    def valid(anns):
        return any(ann.get("iscrowd", 0) == 0 for ann in anns)

    dataset_dicts = [x for x in dataset_dicts if valid(x.get("annotations", []))]
    logger.info(
        f"Removed {num_before - len(dataset_dicts)} images with no usable annotations. {len(dataset_dicts)} images left."
    )
    return dataset_dicts


def print_instances_class_histogram(dataset_dicts: List[Dict], class_names: Sequence[str]) -> None:
    """Log the number of (non-crowd) instances per class."""
    num_classes = len(class_names)
    counts = Counter()
    for entry in dataset_dicts:
        for a in entry.get("annotations", []):
            if not a.get("iscrowd", 0):
                counts[int(a["category_id"])] += 1
    bad = [c for c in counts if not 0 <= c < num_classes]
    if bad:
        raise ValueError(
            f"Got invalid category ids {sorted(bad)[:10]} for {num_classes} classes (expected 0..{num_classes - 1})"
        )
    items = [f"{name}: {counts[i]}" for i, name in enumerate(class_names)]
    shown = items if len(items) <= 12 else items[:12] + [f"... ({len(items) - 12} more)"]
    logger.info(
        f"Distribution of instances among all {num_classes} categories (total {sum(counts.values())}): "
        + ", ".join(shown)
    )


def _check_metadata_consistency(key: str, dataset_names: Sequence[str]) -> None:
    if len(dataset_names) == 0:
        return
    entries = [getattr(MetadataCatalog.get(d), key) for d in dataset_names]
    for idx, entry in enumerate(entries):
        if entry != entries[0]:
            raise ValueError(
                f"Metadata '{key}' of dataset '{dataset_names[idx]}' ({entry}) differs from that of "
                f"'{dataset_names[0]}' ({entries[0]}); datasets used together must share their classes."
            )


def get_detection_dataset_dicts(
    names: Union[str, Sequence[str]],
    filter_empty: bool = True,
    min_keypoints: int = 0,
    proposal_files=None,
    check_consistency: bool = True,
) -> List[Dict]:
    """Load and concatenate the registered datasets ``names``.

    Args:
        names: a dataset name or a list of names.
        filter_empty: drop images without a non-crowd annotation (use True for training, False for test).
        check_consistency: require equal ``thing_classes`` across the datasets and log a class histogram.
    """
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if not names:
        raise ValueError("get_detection_dataset_dicts: no dataset names given")
    if proposal_files:
        raise NotImplementedError("precomputed proposals are not supported")
    missing = [n for n in names if n not in DatasetCatalog]
    if missing:
        raise DatasetNotRegisteredError(
            f"Dataset(s) {missing} are not registered! Available datasets are: "
            f"{', '.join(sorted(DatasetCatalog.keys())) or '(none)'}. Register your own with "
            "detrex.data.register_coco_instances(name, {}, json_file, image_root) in the config file."
        )
    all_dicts = [DatasetCatalog.get(name) for name in names]
    for name, dicts in zip(names, all_dicts):
        if len(dicts) == 0:
            raise EmptyDatasetError(f"Dataset '{name}' is empty: its registered function returned no images.")
    dataset_dicts = list(itertools.chain.from_iterable(all_dicts))
    has_instances = "annotations" in dataset_dicts[0]
    if filter_empty and has_instances:
        dataset_dicts = filter_images_with_only_crowd_annotations(dataset_dicts)
    if check_consistency and has_instances:
        meta = MetadataCatalog.get(names[0])
        if hasattr(meta, "thing_classes"):
            _check_metadata_consistency("thing_classes", names)
            print_instances_class_histogram(dataset_dicts, meta.thing_classes)
    if len(dataset_dicts) == 0:
        raise EmptyDatasetError(
            f"No valid data found in {','.join(names)}: every image was filtered out (training keeps only "
            "images with at least one non-crowd annotation). Check the annotations, or use filter_empty=False."
        )
    return dataset_dicts


def trivial_batch_collator(batch):
    """A batch is just the list of dicts."""
    return batch


def worker_init_reset_seed(worker_id: int) -> None:
    """Give every DataLoader worker distinct python/numpy/torch seeds derived from torch's per-worker seed."""
    from ..utils.env import seed_all_rng

    initial_seed = torch.initial_seed() % 2**31
    seed_all_rng(initial_seed + worker_id)


def _as_dataset(dataset, filter_empty: bool):
    """str / list of names -> dataset dicts; list of dicts -> serialized DatasetFromList; datasets unchanged."""
    if isinstance(dataset, str) or (
        isinstance(dataset, (list, tuple)) and dataset and all(isinstance(x, str) for x in dataset)
    ):
        dataset = get_detection_dataset_dicts(dataset, filter_empty=filter_empty)
    if isinstance(dataset, (list, tuple)):
        dataset = DatasetFromList(list(dataset), copy=False)
    return dataset


def build_batch_data_loader(
    dataset,
    sampler,
    total_batch_size: int,
    *,
    aspect_ratio_grouping: bool = False,
    num_workers: int = 0,
    collate_fn: Optional[Callable] = None,
    pin_memory: bool = False,
    drop_last: bool = True,
):
    """Batched loader over a map-style ``dataset`` and a (possibly infinite) ``sampler``; per-process batch size
    is ``total_batch_size // world_size``."""
    world_size = comm.get_world_size()
    if total_batch_size <= 0 or total_batch_size % world_size != 0:
        raise ValueError(
            f"Total batch size ({total_batch_size}) must be divisible by the number of processes ({world_size})."
        )
    batch_size = total_batch_size // world_size
    if isinstance(dataset, torchdata.IterableDataset):
        if sampler is not None:
            raise ValueError("sampler must be None for an IterableDataset")
    else:
        dataset = ToIterableDataset(dataset, sampler, shard_chunk_size=batch_size)
    loader_kwargs = dict(num_workers=num_workers, worker_init_fn=worker_init_reset_seed, pin_memory=pin_memory)
    if num_workers > 0:
        loader_kwargs["persistent_workers"] = False
    if aspect_ratio_grouping:
        data_loader = torchdata.DataLoader(dataset, collate_fn=operator.itemgetter(0), **loader_kwargs)
        data_loader = AspectRatioGroupedDataset(data_loader, batch_size)
        if collate_fn is None:
            return data_loader
        return MapDataset(data_loader, collate_fn)
    return torchdata.DataLoader(
        dataset,
        batch_size=batch_size,
        drop_last=drop_last,
        collate_fn=trivial_batch_collator if collate_fn is None else collate_fn,
        **loader_kwargs,
    )


class ResumableTrainLoader:
    """The infinite training loader returned by :func:`build_detection_train_loader`.

    Iterating yields per-rank batches (``list[dict]``). ``state_dict()`` = ``{"num_batches", "seed"}``
    (batches handed out so far); ``load_state_dict`` makes the next iterator continue with batch
    ``num_batches`` exactly as an uninterrupted loader would, whatever ``num_workers``: without grouping
    the :class:`TrainingSampler` is moved to global position ``num_batches * total_batch_size``; with
    aspect-ratio grouping or another sampler (done on indices, see
    :class:`TrainBatchStream`) the index stream is replayed. ``W`` processes together see the global
    batches of one process (each rank a contiguous slice), grouping included.
    The trainer checkpoints this state (``trainer.data_loader``).

    Skipped bad images (:mod:`detrex.data.bad_images`): the skip records of every batch are taken out and
    counted by ``bad_images`` (a :class:`BadImageTracker`; its state is part of ``state_dict()`` once an image
    was skipped), before ``collate_fn``.

    Attributes: ``dataset`` (the mapped map-style dataset), ``sampler``, ``total_batch_size``,
    ``batch_size`` (per rank), ``bad_images``.
    """

    def __init__(self, stream: TrainBatchStream, total_batch_size: int, num_workers: int = 0,
                 collate_fn: Optional[Callable] = None, max_bad_image_fraction: float = 0.01,
                 pin_memory: bool = False):
        self.stream = stream
        self.dataset = stream.dataset
        self.sampler = stream.sampler
        self.total_batch_size = total_batch_size
        self.batch_size = stream.batch_size
        self.num_workers = num_workers
        self.pin_memory = bool(pin_memory)
        self.collate_fn = trivial_batch_collator if collate_fn is None else collate_fn
        self.bad_images = BadImageTracker(len(self.dataset), max_bad_image_fraction)
        self._num_batches = 0
        # fast-forward by moving the sampler (TrainingSampler only); other samplers are replayed
        self._base_sampler_state = (
            dict(self.sampler.state_dict()) if isinstance(self.sampler, TrainingSampler) else None
        )

    def __iter__(self):
        kwargs = dict(num_workers=self.num_workers, worker_init_fn=worker_init_reset_seed, pin_memory=self.pin_memory)
        if self.num_workers > 0:
            kwargs["persistent_workers"] = False
        # a fresh DataLoader per iterator: workers receive the current (resumed) stream state
        loader = torchdata.DataLoader(self.stream, batch_size=None, collate_fn=trivial_batch_collator, **kwargs)
        for batch in loader:
            self._num_batches += 1
            self.bad_images.consume(batch)
            yield self.collate_fn(batch)

    def state_dict(self) -> Dict[str, Any]:
        state = {"num_batches": self._num_batches, "seed": int(getattr(self.sampler, "seed", -1))}
        bad = self.bad_images.state_dict()
        if bad:
            state["bad_images"] = bad
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if "num_batches" not in state:
            logger.warning(f"Ignoring a data-loader state of another loader type: {sorted(state)}; "
                           "the data order restarts from the beginning.")
            return
        n = int(state["num_batches"])
        seed = int(state.get("seed", -1))
        self.bad_images.load_state_dict(state.get("bad_images", {}))
        if seed >= 0 and hasattr(self.sampler, "seed") and seed != self.sampler.seed:
            logger.warning(
                f"Resuming the train loader with sampler seed {seed} (this run drew {self.sampler.seed}); "
                "using the checkpoint's seed so that the data order continues exactly."
            )
        self._num_batches = n
        if self.stream.group_ids is None and self._base_sampler_state is not None:
            base = self._base_sampler_state
            self.sampler.load_state_dict(
                {"seed": seed if seed >= 0 else base["seed"],
                 "start_index": int(base["start_index"]) + n * self.total_batch_size}
            )
            self.stream.start_batch = 0
        else:
            if seed >= 0 and self._base_sampler_state is not None:
                self.sampler.load_state_dict(dict(self._base_sampler_state, seed=seed))
            self.stream.start_batch = n


def _orientation_group_ids(dataset) -> Optional[np.ndarray]:
    """0 (``width > height``) / 1 per item of a list-like dataset of dicts; None if sizes are unknown."""
    try:
        n = len(dataset)
        ids = np.empty(n, dtype=np.uint8)
        for i in range(n):
            d = dataset[i]
            ids[i] = 0 if d["width"] > d["height"] else 1
        return ids
    except (TypeError, KeyError, IndexError, AttributeError):
        return None


def build_detection_train_loader(
    dataset,
    *,
    mapper: Optional[Callable],
    total_batch_size: int,
    sampler=None,
    aspect_ratio_grouping: bool = True,
    num_workers: int = 0,
    seed: Optional[int] = None,
    collate_fn: Optional[Callable] = None,
    skip_bad_images: bool = False,
    max_bad_image_fraction: float = 0.01,
    pin_memory: bool = False,
):
    """Infinite training loader yielding ``list[dict]`` of ``total_batch_size // world_size`` mapped dicts.

    Args:
        dataset: a list of dataset dicts (e.g. from :func:`get_detection_dataset_dicts`), a registered name or
            list of names (resolved with ``filter_empty=True``), or a torch Dataset.
        mapper: dataset dict -> model input (e.g. :class:`DetrDatasetMapper`); None to skip mapping.
        total_batch_size: batch size summed over all processes.
        sampler: default ``TrainingSampler(len(dataset), seed=seed)``.
        aspect_ratio_grouping: batch images of the same orientation together (default True, as detectron2),
            decided from the ORIGINAL ``width``/``height`` of the dataset dicts.
        num_workers: DataLoader worker processes.
        seed: sampler seed (None: a random seed shared across processes).
        collate_fn: applied to each list batch (default: none).
        skip_bad_images: False (default): an image that cannot be read (or whose size differs from the dict's)
            stops training with a message naming it. True: it is logged once with its path, replaced by
            another sample and counted (``bad_images_skipped`` in the metrics); sets the mapper's
            ``on_bad_image="skip"`` (:mod:`detrex.data.bad_images`).
        pin_memory: batches in page-locked memory (a background thread of the DataLoader pins them), so the
            model's ``non_blocking`` copies to a GPU overlap its previous step; train_net sets it on CUDA.
        max_bad_image_fraction: with skipping, the run stops once more distinct files than this fraction of
            the dataset (at least one file is tolerated) were bad.

    Returns a :class:`ResumableTrainLoader` (checkpointable position, per-sample seeded augmentation: the
    batches do not depend on ``num_workers`` or on resuming) for map-style datasets; an IterableDataset
    goes through :func:`build_batch_data_loader` (not resumable).
    """
    dataset = _as_dataset(dataset, filter_empty=True)
    if hasattr(dataset, "__len__") and not isinstance(dataset, torchdata.IterableDataset) and len(dataset) == 0:
        raise EmptyDatasetError("build_detection_train_loader: the training dataset is empty.")
    group_ids = None
    if aspect_ratio_grouping and not isinstance(dataset, torchdata.IterableDataset):
        group_ids = _orientation_group_ids(dataset)
    if skip_bad_images:
        if not hasattr(mapper, "on_bad_image"):
            raise ValueError(
                f"dataloader.train.skip_bad_images=True needs a mapper with an 'on_bad_image' setting (e.g. "
                f"DetrDatasetMapper); got {type(mapper).__name__}."
            )
        mapper.on_bad_image = "skip"
    if mapper is not None:
        dataset = MapDataset(dataset, mapper)
    if isinstance(dataset, torchdata.IterableDataset):
        if sampler is not None:
            raise ValueError("sampler must be None for an IterableDataset")
    elif sampler is None:
        sampler = TrainingSampler(len(dataset), seed=seed)
    if not isinstance(dataset, torchdata.IterableDataset) and not isinstance(sampler, torchdata.Sampler):
        raise TypeError(f"Expect a torch Sampler, got {type(sampler)}")
    logger.info(
        f"Using training sampler {type(sampler).__name__}" if sampler is not None else "Iterable dataset: no sampler"
    )
    if isinstance(dataset, torchdata.IterableDataset) or (aspect_ratio_grouping and group_ids is None):
        if aspect_ratio_grouping and group_ids is None and not isinstance(dataset, torchdata.IterableDataset):
            logger.warning(
                "Aspect-ratio grouping without width/height in the dataset dicts: grouping after mapping; "
                "the loader position is not checkpointed (resumed runs see other batches)."
            )
        if skip_bad_images:
            logger.warning("skip_bad_images with this loader: skipped images are replaced but not counted in the "
                           "metrics (see the mapper's num_skipped per process) and no threshold applies.")
        return build_batch_data_loader(
            dataset,
            sampler,
            total_batch_size,
            aspect_ratio_grouping=aspect_ratio_grouping,
            num_workers=num_workers,
            collate_fn=collate_fn,
            pin_memory=pin_memory,
        )
    world_size = comm.get_world_size()
    if total_batch_size <= 0 or total_batch_size % world_size != 0:
        raise ValueError(
            f"Total batch size ({total_batch_size}) must be divisible by the number of processes ({world_size})."
        )
    stream = TrainBatchStream(dataset, sampler, total_batch_size // world_size, group_ids=group_ids,
                              rank=comm.get_rank(), world_size=world_size)
    return ResumableTrainLoader(stream, total_batch_size, num_workers=num_workers, collate_fn=collate_fn,
                                max_bad_image_fraction=max_bad_image_fraction, pin_memory=pin_memory)


def build_detection_test_loader(
    dataset,
    *,
    mapper: Optional[Callable],
    sampler=None,
    batch_size: int = 1,
    num_workers: int = 0,
    collate_fn: Optional[Callable] = None,
):
    """Finite loader over this process's contiguous shard (``InferenceSampler``), ``batch_size`` images per
    batch (1 by default: the DETR models' all-zero eval mask assumes it), yielding ``list[dict]``.

    ``dataset`` as in :func:`build_detection_train_loader`, but names are resolved with ``filter_empty=False``
    so that every image is evaluated.
    """
    dataset = _as_dataset(dataset, filter_empty=False)
    if mapper is not None:
        dataset = MapDataset(dataset, mapper)
    if isinstance(dataset, torchdata.IterableDataset):
        if sampler is not None:
            raise ValueError("sampler must be None for an IterableDataset")
    elif sampler is None:
        sampler = InferenceSampler(len(dataset))
    return torchdata.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=False,
        num_workers=num_workers,
        collate_fn=trivial_batch_collator if collate_fn is None else collate_fn,
    )
