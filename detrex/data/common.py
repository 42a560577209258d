"""Dataset wrappers used by the loaders (detectron2 ``data.common`` semantics).

- :class:`DatasetFromList`: a list of dicts, by default pickled into ONE numpy byte buffer so that forked
  DataLoader workers do not trigger copy-on-read RAM growth (refcount writes touch every Python object).
- :class:`MapDataset`: applies a mapper; when it returns None, retries with another random index.
- :class:`ToIterableDataset`: turns a map-style dataset + sampler into an iterable dataset, sharded across
  DataLoader workers.
- :class:`AspectRatioGroupedDataset`: groups mapped dicts into batches of images with the same orientation
  (two buckets by ORIGINAL ``width > height``).
- :class:`TrainBatchStream`: sampler -> (optionally orientation-grouped) batches of indices -> mapped batches;
  a deterministic function of the sampler stream, so a loader can resume at any batch exactly (used by
  ``build_detection_train_loader``).
"""

import copy
import itertools
import logging
import pickle
import random
from contextlib import contextmanager
from typing import Callable, Iterable, List, Optional

import numpy as np
import torch
import torch.utils.data as data

__all__ = ["DatasetFromList", "MapDataset", "ToIterableDataset", "AspectRatioGroupedDataset", "TrainBatchStream"]

logger = logging.getLogger(__name__)


class DatasetFromList(data.Dataset):
    """Wrap a list as a map-style dataset.

    Args:
        lst: the items (dataset dicts).
        copy: return a deep copy of an item on ``__getitem__`` (only meaningful when not serialized).
        serialize: keep items pickled in one numpy buffer (recommended for large datasets).
    """

    def __init__(self, lst: List, copy: bool = True, serialize: bool = True):
        self._lst = lst
        self._copy = copy
        self._serialize = serialize
        if self._serialize:
            logger.info(f"Serializing {len(lst)} elements to byte tensors and concatenating them all ...")
            blobs = [np.frombuffer(pickle.dumps(x, protocol=-1), dtype=np.uint8) for x in self._lst]
            self._addr = np.cumsum(np.asarray([len(b) for b in blobs], dtype=np.int64))
            self._lst = np.concatenate(blobs) if blobs else np.zeros(0, dtype=np.uint8)
            logger.info("Serialized dataset takes {:.2f} MiB".format(len(self._lst) / 1024**2))

    def __len__(self) -> int:
        return len(self._addr) if self._serialize else len(self._lst)

    def __getitem__(self, idx: int):
        if self._serialize:
            idx = int(idx)
            start = 0 if idx == 0 else self._addr[idx - 1].item()
            end = self._addr[idx].item()
            return pickle.loads(memoryview(self._lst[start:end]))
        if self._copy:
            return copy.deepcopy(self._lst[idx])
        return self._lst[idx]


class MapDataset(data.Dataset):
    """``map_func(dataset[idx])``; a None result is retried with another random (seeded) index.

    Raises ``RuntimeError`` if every item of the dataset has been rejected.
    """

    def __init__(self, dataset, map_func: Callable):
        self._dataset = dataset
        self._map_func = map_func
        self._rng = random.Random(42)
        self._fallback_candidates = set(range(len(dataset)))

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, idx: int):
        retry_count = 0
        cur_idx = int(idx)
        while True:
            result = self._map_func(self._dataset[cur_idx])
            if result is not None:
                self._fallback_candidates.add(cur_idx)
                return result
            retry_count += 1
            self._fallback_candidates.discard(cur_idx)
            if not self._fallback_candidates:
                raise RuntimeError(
                    f"MapDataset: the mapper returned None for every item of the dataset ({len(self._dataset)} items); "
                    "nothing can be loaded. Check the data (e.g. image paths) and the mapper's skip rules."
                )
            cur_idx = self._rng.choice(sorted(self._fallback_candidates))
            if retry_count >= 3:
                logger.warning(f"Failed to apply `_map_func` for idx: {idx}, retry count: {retry_count}")


def _shard_for_worker(iterable: Iterable, chunk_size: int = 1) -> Iterable:
    """Keep only this DataLoader worker's share of ``iterable`` (chunks of ``chunk_size``, round-robin)."""
    worker_info = data.get_worker_info()
    if worker_info is None or worker_info.num_workers == 1:
        yield from iterable
        return
    wid, nw = worker_info.id, worker_info.num_workers
    it = iter(iterable)
    chunk_i = 0
    while True:
        chunk = list(itertools.islice(it, chunk_size))
        if not chunk:
            return
        if chunk_i % nw == wid:
            yield from chunk
        chunk_i += 1


class ToIterableDataset(data.IterableDataset):
    """Iterate ``dataset[i]`` for ``i`` in ``sampler``; with ``shard_sampler`` each DataLoader worker takes a
    disjoint round-robin share (chunks of ``shard_chunk_size`` indices)."""

    def __init__(self, dataset, sampler, shard_sampler: bool = True, shard_chunk_size: int = 1):
        if isinstance(dataset, data.IterableDataset):
            raise TypeError("ToIterableDataset needs a map-style dataset")
        self.dataset = dataset
        self.sampler = sampler
        self.shard_sampler = shard_sampler
        self.shard_chunk_size = shard_chunk_size

    def __iter__(self):
        sampler = _shard_for_worker(self.sampler, self.shard_chunk_size) if self.shard_sampler else self.sampler
        for idx in sampler:
            yield self.dataset[idx]

    def __len__(self) -> int:
        return len(self.sampler)


class AspectRatioGroupedDataset(data.IterableDataset):
    """Batch images of similar aspect ratio: bucket 0 = ``width > height``, bucket 1 = the rest (original
    sizes from the dicts). Yields a list of ``batch_size`` dicts whenever a bucket is full."""

    def __init__(self, dataset: Iterable, batch_size: int):
        self.dataset = dataset
        self.batch_size = batch_size
        self._buckets = [[] for _ in range(2)]

    def __iter__(self):
        for d in self.dataset:
            w, h = d["width"], d["height"]
            bucket_id = 0 if w > h else 1
            bucket = self._buckets[bucket_id]
            bucket.append(d)
            if len(bucket) == self.batch_size:
                batch = bucket[:]
                del bucket[:]
                yield batch


@contextmanager
def _seeded_rngs(seed: int):
    """Seed python/numpy/torch global RNGs with ``seed`` inside the block; restore them afterwards."""
    py, np_state, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(th)


class TrainBatchStream(data.IterableDataset):
    """Infinite per-rank batches of mapped items, exactly resumable and independent of the process count.

    The batches are a deterministic function of the sampler's GLOBAL stream:

    1. every rank reads the whole global index stream (``sampler.iter_global_with_positions()``, e.g.
       :class:`~detrex.data.samplers.TrainingSampler`) and cuts the same global batches of
       ``batch_size * world_size`` indices: consecutive chunks, or, with ``group_ids`` (bucket id per
       dataset index, e.g. 0 for ``width > height`` else 1, from the ORIGINAL sizes), per-bucket groups
       (a global batch is emitted when its bucket is full);
    2. rank ``r`` loads the ``r``-th contiguous ``batch_size`` slice of each global batch, so ``W`` processes
       see exactly the global batches of one process;
    3. batch ``j`` is loaded by DataLoader worker ``j % num_workers`` (all workers replay the cheap index
       stream), so the order does not depend on the number of workers;
    4. with ``seed_per_item`` each item is mapped with python/numpy/torch RNGs seeded from
       ``(sampler seed, global position)`` (global RNG states are restored after), so random augmentation
       does not depend on workers, process count or resumes.

    A sampler without ``iter_global_with_positions`` is used as a per-rank stream (steps 1-2 then apply
    to this rank's indices only). ``start_batch`` skips that many batches by replaying the index stream
    (no image is loaded): this is how a resumed loader continues where the interrupted one stopped.
    Residual non-exactness: a mapper that returns None (e.g. a skipped undecodable image) is replaced by
    :class:`MapDataset`'s own retry RNG, which is not part of the resumable state.
    """

    def __init__(self, dataset, sampler, batch_size: int, group_ids: Optional[np.ndarray] = None,
                 seed_per_item: bool = True, rank: int = 0, world_size: int = 1):
        if isinstance(dataset, data.IterableDataset):
            raise TypeError("TrainBatchStream needs a map-style dataset")
        self.dataset = dataset
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.group_ids = group_ids
        self.seed_per_item = seed_per_item
        self.start_batch = 0
        self.global_stream = hasattr(sampler, "iter_global_with_positions")
        self.rank, self.world_size = (rank, world_size) if self.global_stream else (0, 1)

    def _positions(self):
        if self.global_stream:
            return self.sampler.iter_global_with_positions()
        if hasattr(self.sampler, "iter_with_positions"):
            return self.sampler.iter_with_positions()
        return enumerate(self.sampler)

    def index_batches(self):
        """Infinite (for an infinite sampler) iterator of this rank's batches of ``(position, index)``."""
        size = self.batch_size * self.world_size
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        it = self._positions()
        if self.group_ids is None:
            while True:
                chunk = list(itertools.islice(it, size))
                if len(chunk) < size:
                    return
                yield chunk[lo:hi]
        buckets = {}
        for pos, idx in it:
            bucket = buckets.setdefault(int(self.group_ids[idx]), [])
            bucket.append((pos, idx))
            if len(bucket) == size:
                batch = bucket[lo:hi]
                del bucket[:]
                yield batch

    def _load(self, pos: int, idx: int):
        if not self.seed_per_item:
            return self.dataset[idx]
        base = int(getattr(self.sampler, "seed", 0))
        with _seeded_rngs((base * 1_000_003 + int(pos)) % 2**63):
            return self.dataset[idx]

    def __iter__(self):
        worker_info = data.get_worker_info()
        wid, nw = (0, 1) if worker_info is None else (worker_info.id, worker_info.num_workers)
        batches = itertools.islice(self.index_batches(), self.start_batch, None)
        for j, batch in enumerate(batches):
            if j % nw == wid:
                yield [self._load(pos, idx) for pos, idx in batch]
