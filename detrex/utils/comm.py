"""Process-group helpers (rank, world size, gather, barrier).

Same names and semantics as ``detectron2.utils.comm``. Every function works when
``torch.distributed`` is not available or not initialized: the process is then rank 0 of a
world of size 1, and collectives return their single-process answer.
"""
import functools
import os

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "is_dist_avail_and_initialized",
    "get_world_size",
    "get_rank",
    "get_local_rank",
    "get_local_size",
    "is_main_process",
    "synchronize",
    "all_gather",
    "gather",
    "shared_random_seed",
    "reduce_dict",
    "create_local_process_group",
    "get_local_process_group",
]

_LOCAL_PROCESS_GROUP = None
_MISSING_LOCAL_PG_ERROR = (
    "Local process group is not yet created! Please use detrex's `launch()` to start "
    "processes and initialize pytorch process group. If you need to start processes in "
    "other ways, please call comm.create_local_process_group(num_workers_per_machine) "
    "after calling torch.distributed.init_process_group()."
)


def _dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_dist_avail_and_initialized() -> bool:
    """True when torch.distributed is available and a process group is initialized."""
    return _dist_ready()


def get_world_size() -> int:
    """Number of processes in the default group (1 without torch.distributed)."""
    return dist.get_world_size() if _dist_ready() else 1


def get_rank() -> int:
    """Global rank of this process (0 without torch.distributed)."""
    return dist.get_rank() if _dist_ready() else 0


@functools.lru_cache()
def create_local_process_group(num_workers_per_machine: int) -> None:
    """Create the per-machine process group; must be called by every rank (after init)."""
    global _LOCAL_PROCESS_GROUP
    assert _LOCAL_PROCESS_GROUP is None
    world = get_world_size()
    if world % num_workers_per_machine != 0:
        raise ValueError(
            f"World size {world} is not a multiple of the processes per machine "
            f"({num_workers_per_machine})."
        )
    num_machines = world // num_workers_per_machine
    machine_rank = get_rank() // num_workers_per_machine
    for i in range(num_machines):
        ranks = list(range(i * num_workers_per_machine, (i + 1) * num_workers_per_machine))
        pg = dist.new_group(ranks)
        if i == machine_rank:
            _LOCAL_PROCESS_GROUP = pg


def get_local_process_group():
    """The per-machine process group created by :func:`create_local_process_group`."""
    assert _LOCAL_PROCESS_GROUP is not None, _MISSING_LOCAL_PG_ERROR
    return _LOCAL_PROCESS_GROUP


def get_local_rank() -> int:
    """Rank of this process within its machine (0 without torch.distributed)."""
    if not _dist_ready():
        return 0
    if _LOCAL_PROCESS_GROUP is not None:
        return dist.get_rank(group=_LOCAL_PROCESS_GROUP)
    if "LOCAL_RANK" in os.environ:  # torchrun sets it
        return int(os.environ["LOCAL_RANK"])
    raise RuntimeError(_MISSING_LOCAL_PG_ERROR)


def get_local_size() -> int:
    """Number of processes on this machine (1 without torch.distributed)."""
    if not _dist_ready():
        return 1
    if _LOCAL_PROCESS_GROUP is not None:
        return dist.get_world_size(group=_LOCAL_PROCESS_GROUP)
    if "LOCAL_WORLD_SIZE" in os.environ:
        return int(os.environ["LOCAL_WORLD_SIZE"])
    raise RuntimeError(_MISSING_LOCAL_PG_ERROR)


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    """Barrier across all processes; a no-op in a single process."""
    if not _dist_ready() or get_world_size() == 1:
        return
    if dist.get_backend() == dist.Backend.NCCL and torch.cuda.is_available():
        # device_ids avoids a warning and a hang when the current device is not set
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


@functools.lru_cache()
def _get_global_gloo_group():
    """A gloo group over all ranks, used for object collectives when the backend is NCCL."""
    if dist.get_backend() == "nccl":
        return dist.new_group(backend="gloo")
    return dist.group.WORLD


def all_gather(data, group=None) -> list:
    """Gather any picklable object from every rank; returns a list with one entry per rank."""
    if get_world_size() == 1:
        return [data]
    if group is None:
        group = _get_global_gloo_group()
    world_size = dist.get_world_size(group)
    if world_size == 1:
        return [data]
    output = [None for _ in range(world_size)]
    dist.all_gather_object(output, data, group=group)
    return output


def gather(data, dst: int = 0, group=None) -> list:
    """Gather any picklable object to rank ``dst``.

    Returns the list of objects on ``dst`` and an empty list on the other ranks.
    """
    if get_world_size() == 1:
        return [data]
    if group is None:
        group = _get_global_gloo_group()
    world_size = dist.get_world_size(group=group)
    if world_size == 1:
        return [data]
    rank = dist.get_rank(group=group)
    if rank == dst:
        output = [None for _ in range(world_size)]
        dist.gather_object(data, output, dst=dst, group=group)
        return output
    dist.gather_object(data, None, dst=dst, group=group)
    return []


def shared_random_seed() -> int:
    """A random int in [0, 2**31) that is the same on every rank (rank 0's draw)."""
    ints = np.random.randint(2**31)
    return all_gather(ints)[0]


def reduce_dict(input_dict: dict, average: bool = True) -> dict:
    """Reduce a dict of scalar tensors to rank 0 (summed, or averaged with ``average``).

    Only rank 0 receives the reduced values; other ranks get their inputs back unchanged.
    """
    world_size = get_world_size()
    if world_size < 2:
        return input_dict
    with torch.no_grad():
        names = sorted(input_dict.keys())
        values = torch.stack([input_dict[k] for k in names], dim=0)
        dist.reduce(values, dst=0)
        if dist.get_rank() == 0 and average:
            values /= world_size
        return {k: v for k, v in zip(names, values)}
