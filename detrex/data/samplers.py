"""Samplers (detectron2 semantics): an infinite seeded training sampler and a sharded inference sampler."""

import itertools
import logging
from typing import Dict, Optional

import torch
from torch.utils.data.sampler import Sampler

from ..utils import comm

__all__ = ["TrainingSampler", "InferenceSampler"]

logger = logging.getLogger(__name__)


class TrainingSampler(Sampler):
    """Infinite stream of indices in ``[0, size)``: shuffled epochs (``torch.randperm`` with a generator seeded
    by ``seed``), or ``0..size-1`` repeated when ``shuffle=False``.

    The global stream is the same on every process (``seed=None`` draws one on rank 0 and shares it through
    :func:`comm.shared_random_seed`); rank ``r`` of ``world_size`` takes global positions ``r, r + world_size, ...``,
    so the shards are disjoint and together cover the stream.

    Resuming: ``start_index`` = number of GLOBAL positions already consumed (e.g. ``iteration * total_batch_size``).
    ``state_dict()`` = ``{"seed", "start_index"}`` where ``start_index`` counts what this process's iterators
    have yielded (times ``world_size``); with DataLoader workers (``num_workers > 0``) the sampler runs in the
    workers, so compute ``start_index`` from the iteration instead and pass it to :meth:`load_state_dict`.
    """

    def __init__(self, size: int, shuffle: bool = True, seed: Optional[int] = None, start_index: int = 0):
        if not isinstance(size, int):
            raise TypeError(f"TrainingSampler(size=...) expects an int, got {type(size)}")
        if size <= 0:
            raise ValueError(f"TrainingSampler(size=...) expects a positive int, got {size}")
        self._size = size
        self._shuffle = shuffle
        if seed is None:
            seed = comm.shared_random_seed()
        self._seed = int(seed)
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()
        self._start_index = int(start_index)
        self._num_yielded = 0  # per-rank items yielded by iterators created in this process

    def __iter__(self):
        for _, idx in self.iter_with_positions():
            yield idx

    def iter_with_positions(self):
        """Like ``iter(sampler)`` but yields ``(global_position, index)``: the position of the
        index in the global stream (shared by all ranks), e.g. to seed per-sample augmentation."""
        start = self._start_index + self._rank
        stream = itertools.islice(self._infinite_indices(), start, None, self._world_size)
        for pos, idx in zip(itertools.count(start, self._world_size), stream):
            self._num_yielded += 1
            yield pos, idx

    def iter_global_with_positions(self):
        """``(global_position, index)`` for EVERY position from ``start_index`` on (not sharded):
        lets each rank cut the same global batches (e.g. grouped by aspect ratio) and take its part."""
        stream = itertools.islice(self._infinite_indices(), self._start_index, None)
        return zip(itertools.count(self._start_index), stream)

    @property
    def seed(self) -> int:
        return self._seed

    def _infinite_indices(self):
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            if self._shuffle:
                yield from torch.randperm(self._size, generator=g).tolist()
            else:
                yield from torch.arange(self._size).tolist()

    def state_dict(self) -> Dict[str, int]:
        return {"seed": self._seed, "start_index": self._start_index + self._num_yielded * self._world_size}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        if int(state["seed"]) != self._seed:
            logger.warning(f"TrainingSampler: loading a state with seed {state['seed']} (was {self._seed})")
        self._seed = int(state["seed"])
        self._start_index = int(state["start_index"])
        self._num_yielded = 0


class InferenceSampler(Sampler):
    """Each rank gets a contiguous shard of ``range(size)``; shard sizes differ by at most one, together they
    cover every index exactly once (no padding, so no image is evaluated twice)."""

    def __init__(self, size: int):
        self._size = size
        if size <= 0:
            raise ValueError(f"InferenceSampler(size=...) expects a positive int, got {size}")
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()
        self._local_indices = self._get_local_indices(size, self._world_size, self._rank)

    @staticmethod
    def _get_local_indices(total_size: int, world_size: int, rank: int) -> range:
        shard_size = total_size // world_size
        left = total_size % world_size
        shard_sizes = [shard_size + int(r < left) for r in range(world_size)]
        begin = sum(shard_sizes[:rank])
        end = min(sum(shard_sizes[: rank + 1]), total_size)
        return range(begin, end)

    def __iter__(self):
        yield from self._local_indices

    def __len__(self) -> int:
        return len(self._local_indices)
