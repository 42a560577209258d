"""Start one process per device: ``launch`` (mp spawn, detectron2 compatible) or torchrun.

* ``--num-gpus N`` (N processes per machine) with ``--dist-url auto`` (default) spawns N workers
  on a free local port.
* Under ``torchrun`` (``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_ADDR`` in the environment) no
  process is spawned: the process group is initialized with ``env://`` and ``main_func`` runs.
* Backend: NCCL for CUDA training, gloo otherwise (CPU). Each worker gets a process-group
  timeout (30 minutes by default; ``$DETREX_DIST_TIMEOUT`` seconds overrides it), so a dead peer
  makes the others exit with an error instead of hanging; with spawned workers the launcher
  also terminates the remaining workers as soon as one fails.
"""
import logging
import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detrex.utils import comm

__all__ = ["DEFAULT_TIMEOUT", "launch", "find_free_port", "is_torchrun", "get_timeout"]

DEFAULT_TIMEOUT = timedelta(minutes=30)
TIMEOUT_ENV_VAR = "DETREX_DIST_TIMEOUT"


def get_timeout(default: timedelta = DEFAULT_TIMEOUT) -> timedelta:
    """``$DETREX_DIST_TIMEOUT`` (seconds) if set, else ``default``."""
    value = os.environ.get(TIMEOUT_ENV_VAR)
    if not value:
        return default
    try:
        seconds = float(value)
        if seconds <= 0:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"${TIMEOUT_ENV_VAR}={value!r} is not a positive number of seconds."
        ) from None
    return timedelta(seconds=seconds)

logger = logging.getLogger(__name__)


def find_free_port() -> int:
    """A currently free TCP port on localhost (the OS picks it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def is_torchrun() -> bool:
    """True inside a process started by ``torchrun`` / ``torch.distributed.run``."""
    return all(k in os.environ for k in ("LOCAL_RANK", "WORLD_SIZE", "RANK", "MASTER_ADDR"))


def _default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def launch(main_func, num_gpus_per_machine: int, num_machines: int = 1, machine_rank: int = 0,
           dist_url: str = "auto", args=(), timeout: timedelta = None,
           backend: str = None):
    """Run ``main_func(*args)`` in ``num_gpus_per_machine * num_machines`` processes.

    Args:
        main_func: called in every process, after the process group is ready.
        num_gpus_per_machine: processes per machine (``--num-gpus``; on CPU, gloo processes).
        num_machines, machine_rank: multi-machine jobs.
        dist_url: ``tcp://host:port`` or ``"auto"`` (single machine only: a free local port).
        backend: ``"nccl"`` or ``"gloo"``; default NCCL if CUDA is available, else gloo. Pass
            ``"gloo"`` for CPU training on a CUDA machine.
        timeout: collective timeout; default :func:`get_timeout` (30 min or the env var).
    """
    backend = backend or _default_backend()
    timeout = timeout or get_timeout()
    if is_torchrun():
        _run_under_torchrun(main_func, args, timeout, backend, num_gpus_per_machine)
        return
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        main_func(*args)
        return
    if backend == "nccl" and num_gpus_per_machine > torch.cuda.device_count():
        raise ValueError(
            f"--num-gpus {num_gpus_per_machine} with NCCL, but only "
            f"{torch.cuda.device_count()} CUDA devices are visible. Use train.device=cpu "
            "(gloo processes) or fewer processes."
        )
    if not dist_url or dist_url == "auto":
        if num_machines != 1:
            raise ValueError(
                "--dist-url auto only works on a single machine; pass tcp://<host>:<port> of "
                "machine 0 to every machine."
            )
        dist_url = f"tcp://127.0.0.1:{find_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// is not a reliable init method across machines; prefer tcp://")
    mp.start_processes(
        _distributed_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args,
              timeout, backend),
        daemon=False,
        start_method="spawn",
    )


def _run_under_torchrun(main_func, args, timeout, backend, num_gpus_per_machine):
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if num_gpus_per_machine not in (1, local_size):
        logger.warning(
            f"Running under torchrun with {local_size} processes per machine; --num-gpus "
            f"{num_gpus_per_machine} is ignored."
        )
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
    comm.create_local_process_group(local_size)
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        _destroy()


def _destroy():
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # pragma: no cover
            pass


def _distributed_worker(local_rank, main_func, world_size, num_gpus_per_machine, machine_rank,
                        dist_url, args, timeout=DEFAULT_TIMEOUT, backend="gloo"):
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    if backend == "nccl":
        assert num_gpus_per_machine <= torch.cuda.device_count()
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(backend=backend, init_method=dist_url, world_size=world_size,
                                rank=global_rank, timeout=timeout)
    except Exception as e:
        raise RuntimeError(
            f"Process group initialization failed with --dist-url {dist_url}: {e}. If the "
            "address is in use (errno 98), use --dist-url auto or another port."
        ) from e
    comm.create_local_process_group(num_gpus_per_machine)
    # synchronize is needed here to prevent a possible timeout after calling init_process_group
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        _destroy()
