"""Command line, run setup, writers and DDP wrapping shared by ``tools/train_net.py`` and scripts.

Names and behaviour follow ``detectron2.engine.defaults``; differences: ``--dist-url`` defaults
to ``auto`` (a free port, no "address already in use"), setup also configures the ``detrex``
and ``projects`` loggers, and an unwritable output directory is a clear error.
"""
import argparse
import os
import sys
from typing import Optional

import torch
from torch.nn.parallel import DistributedDataParallel

from detrex.utils import comm
from detrex.utils.env import collect_env_info, seed_all_rng
from detrex.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter
from detrex.utils.file_io import PathManager
from detrex.utils.logger import setup_logger

__all__ = [
    "default_argument_parser",
    "default_setup",
    "default_writers",
    "create_ddp_model",
    "enable_deterministic",
]


def default_argument_parser(epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """detectron2's CLI: ``--config-file --resume --eval-only --num-gpus --num-machines
    --machine-rank --dist-url`` and trailing ``path.key=value`` overrides (``opts``)."""
    parser = argparse.ArgumentParser(
        epilog=epilog
        or f"""
Examples:

Run on single machine:
    $ {sys.argv[0]} --num-gpus 8 --config-file cfg.py

Change some config options:
    $ {sys.argv[0]} --config-file cfg.py train.max_iter=100 train.output_dir=/tmp/run

Run on multiple machines:
    (machine0)$ {sys.argv[0]} --machine-rank 0 --num-machines 2 --dist-url tcp://<host>:<port> [--other-flags]
    (machine1)$ {sys.argv[0]} --machine-rank 1 --num-machines 2 --dist-url tcp://<host>:<port> [--other-flags]

Under torchrun (env:// is used, --num-gpus is ignored):
    $ torchrun --nproc-per-node 8 {sys.argv[0]} --config-file cfg.py
""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to config file")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="Whether to attempt to resume from the checkpoint directory "
        "(train.output_dir/last_checkpoint).",
    )
    parser.add_argument("--eval-only", action="store_true", help="perform evaluation only")
    parser.add_argument("--num-gpus", type=int, default=1,
                        help="number of processes per machine (GPUs; gloo processes on CPU)")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0,
                        help="the rank of this machine (unique per machine)")
    parser.add_argument(
        "--dist-url",
        default="auto",
        help="initialization URL for pytorch distributed backend: tcp://<host>:<port>, or "
        "'auto' (default) for a free port on this machine (single-machine jobs only).",
    )
    parser.add_argument(
        "opts",
        help="Modify config options at the end of the command, as 'path.key=value' pairs "
        "(e.g. train.max_iter=100).",
        default=None,
        nargs=argparse.REMAINDER,
    )
    return parser


def _try_get_key(cfg, *keys, default=None):
    from detrex.config import try_get_key

    return try_get_key(cfg, *keys, default=default)


def _highlight(code: str, filename: str) -> str:
    if not (hasattr(sys.stdout, "isatty") and sys.stdout.isatty()):
        return code  # no escape codes in redirected output and log files
    try:
        import pygments
        from pygments.formatters import Terminal256Formatter
        from pygments.lexers import Python3Lexer, YamlLexer
    except ImportError:
        return code
    lexer = Python3Lexer() if filename.endswith(".py") else YamlLexer()
    return pygments.highlight(code, lexer, Terminal256Formatter(style="monokai"))


def _ensure_writable_dir(output_dir: str) -> None:
    try:
        PathManager.mkdirs(output_dir)
    except OSError as e:
        raise PermissionError(
            f"Cannot create train.output_dir={output_dir!r}: {e}. Set train.output_dir to a "
            "writable directory (e.g. train.output_dir=./output)."
        ) from e
    if "://" not in output_dir and not os.access(output_dir, os.W_OK | os.X_OK):
        raise PermissionError(
            f"train.output_dir={output_dir!r} is not writable. Set train.output_dir to a "
            "writable directory (e.g. train.output_dir=./output)."
        )


def default_setup(cfg, args) -> None:
    """Prepare a run: output dir, loggers, environment info, ``config.yaml``, seeds, cudnn.

    1. create ``train.output_dir`` (rank 0; a clear error if it is not writable);
    2. log to stdout (rank 0) and ``<output_dir>/log.txt`` (``log.txt.rank{N}`` for rank N) for
       the ``detrex``, ``projects``, ``fvcore`` and ``__main__`` loggers;
    3. log rank/world size, environment info, command-line args and the config file text;
    4. save the full config to ``<output_dir>/config.yaml`` with ``LazyConfig.save`` (rank 0);
    5. seed all RNGs with ``train.seed + rank`` (``train.seed < 0``: a random seed, logged);
    6. ``cudnn.benchmark = train.cudnn_benchmark`` (default False) unless ``--eval-only``;
    7. ``train.deterministic=True``: :func:`enable_deterministic` (deterministic kernels, errors
       on ops that have none).
    """
    output_dir = _try_get_key(cfg, "train.output_dir", "output_dir", "OUTPUT_DIR")
    if comm.is_main_process() and output_dir:
        _ensure_writable_dir(output_dir)

    rank = comm.get_rank()
    logger = setup_logger(output_dir, distributed_rank=rank)

    logger.info("Rank of current process: {}. World size: {}".format(rank, comm.get_world_size()))
    logger.info("Environment info:\n" + collect_env_info())
    logger.info("Command line arguments: " + str(args))
    if hasattr(args, "config_file") and args.config_file != "":
        with PathManager.open(args.config_file, "r") as f:
            text = f.read()
        logger.info(
            "Contents of args.config_file={}:\n{}".format(
                args.config_file, _highlight(text, args.config_file)
            )
        )

    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "config.yaml")
        from detrex.config import LazyConfig

        LazyConfig.save(cfg, path)
        logger.info("Full config saved to {}".format(path))

    seed = _try_get_key(cfg, "train.seed", "seed", "SEED", default=-1)
    seed = seed_all_rng(None if seed is None or seed < 0 else seed + rank)
    logger.info(f"Random seed of this process: {seed}")

    if not (hasattr(args, "eval_only") and args.eval_only):
        torch.backends.cudnn.benchmark = bool(
            _try_get_key(cfg, "train.cudnn_benchmark", "CUDNN_BENCHMARK", default=False)
        )
    if _try_get_key(cfg, "train.deterministic", default=False):
        enable_deterministic()
        logger.info("Deterministic algorithms enabled (train.deterministic=True).")
    fp32_precision = _try_get_key(cfg, "train.float32_precision", default=None)
    if fp32_precision:
        torch.set_float32_matmul_precision(str(fp32_precision))


def enable_deterministic() -> None:
    """Make torch pick deterministic kernels (and raise on ops that have none).

    Sets ``torch.use_deterministic_algorithms(True)``, ``cudnn.deterministic=True``,
    ``cudnn.benchmark=False`` and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (needed by cuBLAS on CUDA
    >= 10.2) unless already set. With a fixed ``train.seed`` and the same number of threads
    (``OMP_NUM_THREADS``; it changes reduction order) this makes CPU runs bit-identical; on
    CUDA, ops without a deterministic kernel raise a RuntimeError naming the op.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def default_writers(output_dir: str, max_iter: Optional[int] = None, window_size: int = 20,
                    start_iter: int = 0):
    """Console line, ``<output_dir>/metrics.json`` and TensorBoard events in ``output_dir``.

    ``start_iter > 0`` (a resumed run): TensorBoard events at steps >= ``start_iter`` written by
    the interrupted run are purged (``purge_step``); trim ``metrics.json`` with
    :func:`detrex.utils.events.truncate_metrics_json` before creating the writers.
    """
    PathManager.mkdirs(output_dir)
    tb_kwargs = {"purge_step": int(start_iter)} if start_iter > 0 else {}
    return [
        CommonMetricPrinter(max_iter, window_size=window_size),
        JSONWriter(os.path.join(output_dir, "metrics.json"), window_size=window_size),
        TensorboardXWriter(output_dir, window_size=window_size, **tb_kwargs),
    ]


def _ddp_has_param(name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(DistributedDataParallel.__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def create_ddp_model(model: torch.nn.Module, *, fp16_compression: bool = False, **kwargs):
    """Wrap ``model`` in ``DistributedDataParallel`` when the world size is > 1.

    On CUDA, ``device_ids=[local_rank]`` is filled in; on CPU (gloo) no device ids are used.
    ``kwargs`` (e.g. ``broadcast_buffers``, ``find_unused_parameters`` from ``train.ddp``) go to
    DDP; ``fp16_compression`` registers the fp16 gradient-compression communication hook.
    """
    if comm.get_world_size() == 1:
        return model
    try:
        param_device = next(model.parameters()).device
    except StopIteration:
        param_device = torch.device("cpu")
    if "device_ids" not in kwargs and param_device.type == "cuda":
        kwargs["device_ids"] = [comm.get_local_rank()]
    if "broadcast_buffers" in kwargs and _ddp_has_param("forward_sync_buffers"):
        # newer torch renames the option (it differs only in always syncing buffers at init,
        # which is harmless: every rank starts from the same weights)
        kwargs["forward_sync_buffers"] = kwargs.pop("broadcast_buffers")
    ddp = DistributedDataParallel(model, **kwargs)
    if fp16_compression:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp
