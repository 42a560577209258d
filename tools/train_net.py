#!/usr/bin/env python
"""Train or evaluate a detector from a LazyConfig ``.py``/``.yaml`` file.

    python tools/train_net.py --config-file projects/dab_detr/configs/dab_detr_r50_50ep.py \
        --num-gpus 8 train.output_dir=./output/dab_detr

    python tools/train_net.py --config-file <cfg> --eval-only train.init_checkpoint=<model.pth>
    python tools/train_net.py --config-file <cfg> --resume          # continue from last_checkpoint
    torchrun --nproc-per-node 8 tools/train_net.py --config-file <cfg>

Flow (as detrex's ``tools/train_net.py``): load the config, apply ``key=value`` overrides,
``default_setup`` (output dir, logs, ``config.yaml``, seed); then either evaluate
``train.init_checkpoint`` (``--eval-only``) or train with hooks in the order IterationTimer,
EMAHook, LRScheduler, EvalHook, PeriodicWriter, PeriodicCheckpointer (the checkpoint last, see
``detrex.engine.hooks``).

Resume (``--resume``) continues from the newest complete checkpoint of ``train.output_dir`` with
model, optimizer, scheduler, grad scaler, EMA, data-loader position, RNG states (every rank's) and
metric histories; ``metrics.json`` lines after the resumed iteration are dropped first, so the
file ends up as an uninterrupted run would have written it. A checkpoint that completed more
iterations than ``train.max_iter`` is reported in one line (nothing to train; how to extend; use
``--eval-only`` for metrics) and the run exits 0; one that completed exactly ``train.max_iter``
only runs the final evaluation. A larger (or smaller) ``train.max_iter`` than the checkpoint's
run stretches (compresses) the LR schedule to the new length, and the log says so
(``detrex.engine.hooks.LRScheduler``).

User errors (missing config/checkpoint, unknown override key, wrong type, unregistered or empty
dataset, undecodable image, unwritable output dir, non-finite loss, a peer process that died) end
the run with ONE line ``train_net.py: error: ...`` on stderr and exit code 2 (configuration) or 1
(run time), without a traceback; set ``DETREX_DEBUG=1`` to get the traceback.

``train.device`` decides where the model runs. If it asks for CUDA and none is available, the run
falls back to CPU with one warning (``model.device`` is switched too when it was a CUDA string);
``--num-gpus N`` then starts N gloo processes.
"""
import logging
import os
import sys

# repository root on sys.path, so `projects.<name>` modules import from a source checkout
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import torch  # noqa: E402

from detrex.checkpoint import DetectionCheckpointer  # noqa: E402
from detrex.config import LazyConfig, instantiate, try_get_key  # noqa: E402
from detrex.engine import (  # noqa: E402
    Trainer,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
    launch,
)
from detrex.engine import compile_model, ema  # noqa: E402
from detrex.solver import resolve_optimizer_impl  # noqa: E402
from detrex.utils import comm  # noqa: E402
from detrex.utils.events import truncate_metrics_json  # noqa: E402

logger = logging.getLogger("detrex")


def _run_inference(model, data_loader, evaluator):
    """``detrex.evaluation.inference_on_dataset`` (imported lazily), else a minimal local loop."""
    try:
        from detrex.evaluation import inference_on_dataset
    except ImportError:
        inference_on_dataset = None
    if inference_on_dataset is not None:
        return inference_on_dataset(model, data_loader, evaluator)
    evaluator.reset()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for inputs in data_loader:
                evaluator.process(inputs, model(inputs))
    finally:
        model.train(was_training)
    results = evaluator.evaluate()
    return {} if results is None else results


def _print_results(results):
    try:
        from detrex.evaluation import print_csv_format
    except ImportError:
        print_csv_format = None
    if print_csv_format is not None:
        try:
            print_csv_format(results)
            return
        except (TypeError, ValueError) as e:  # an evaluator with an unusual result layout
            logger.debug(f"print_csv_format failed ({e}); printing plainly")
    for task, res in results.items():
        logger.info(f"copypaste: Task: {task}")
        if isinstance(res, dict):
            logger.info("copypaste: " + ",".join(str(k) for k in res.keys()))
            logger.info("copypaste: " + ",".join(f"{float(v):.4f}" for v in res.values()))
        else:
            logger.info(f"copypaste: {task}={res}")


def do_test(cfg, model, eval_only=False):
    """Evaluate ``model`` on ``dataloader.test`` with ``dataloader.evaluator``.

    Returns the evaluator's results (``{}`` if the config has no evaluator). With EMA enabled
    (and not ``eval_only``), the EMA weights are evaluated as well and their results replace the
    raw ones under the same keys, as in detrex.
    """
    evaluator_cfg = try_get_key(cfg, "dataloader.evaluator")
    test_cfg = try_get_key(cfg, "dataloader.test")
    if evaluator_cfg is None or test_cfg is None:
        logger.warning("The config has no dataloader.test/dataloader.evaluator: skipping evaluation.")
        return {}
    logger.info("Run evaluation without EMA.")
    ret = _run_inference(model, instantiate(test_cfg), instantiate(evaluator_cfg))
    if ret:
        _print_results(ret)
    if try_get_key(cfg, "train.model_ema.enabled", default=False) and not eval_only:
        logger.info("Run evaluation with EMA.")
        with ema.apply_model_ema_and_restore(model):
            ema_ret = _run_inference(model, instantiate(test_cfg), instantiate(evaluator_cfg))
            if ema_ret:
                _print_results(ema_ret)
                ret.update(ema_ret)
    return ret


def _log_epoch_mapping(cfg, train_loader):
    """Log how many iterations one epoch is, when the dataset length is known."""
    try:
        num_images = len(train_loader.dataset)
    except Exception:
        return
    total_batch = try_get_key(cfg, "dataloader.train.total_batch_size") or getattr(
        train_loader, "total_batch_size", None
    )
    if not total_batch:
        return
    iters_per_epoch = max(1, num_images // int(total_batch))
    logger.info(
        f"{num_images} training images at total batch size {total_batch}: 1 epoch = "
        f"{iters_per_epoch} iterations; train.max_iter={cfg.train.max_iter} = "
        f"{cfg.train.max_iter / iters_per_epoch:.2f} epochs."
    )


def _nothing_to_train(path: str, done: int, max_iter: int) -> str:
    """The one line of a resumed run whose checkpoint is past ``train.max_iter`` (the run then exits 0)."""
    return (f"Nothing to train: the checkpoint {path} has completed {done} iterations, more than "
            f"train.max_iter={max_iter}. To train longer, resume with train.max_iter > {done} (the LR schedule "
            f"is then stretched to the new length); for its metrics run --eval-only "
            f"train.init_checkpoint={path}.")


def do_train(args, cfg):
    """Build model, optimizer, data, trainer, checkpointer and hooks; then train."""
    model = instantiate(cfg.model)
    logger.info("Model:\n{}".format(model))
    model.to(cfg.train.device)
    if try_get_key(cfg, "train.activation_checkpoint", default=False):
        from detrex.layers import set_activation_checkpoint

        num = set_activation_checkpoint(model)
        logger.info(f"Activation checkpointing on {num} encoder/decoder layers (train.activation_checkpoint=True): "
                    "their activations are recomputed in backward.")
    maybe_compile(cfg, model)

    cfg.optimizer.params.model = model
    optimizer_warning = resolve_optimizer_impl(cfg.optimizer, cfg.train.device)
    if optimizer_warning:
        logger.warning(optimizer_warning)
    optim = instantiate(cfg.optimizer)

    _pin_train_batches(cfg)
    train_loader = instantiate(cfg.dataloader.train)
    _log_epoch_mapping(cfg, train_loader)

    model = create_ddp_model(model, **cfg.train.ddp)
    ema.may_build_model_ema(cfg, model)

    trainer = Trainer(
        model=model,
        data_loader=train_loader,
        optimizer=optim,
        amp=cfg.train.amp.enabled,
        amp_dtype=try_get_key(cfg, "train.amp.dtype", default="float16"),
        amp_weight_copies=try_get_key(cfg, "train.amp.weight_copies", default=True),
        clip_grad_params=cfg.train.clip_grad.params if cfg.train.clip_grad.enabled else None,
        device=cfg.train.device,
        skip_nonfinite_loss=try_get_key(cfg, "train.skip_nonfinite_loss", default=False),
        # losses stay on the device and are read once per log period (no host sync per iteration)
        gather_metric_period=try_get_key(cfg, "train.log_period", default=20),
    )
    checkpointer = DetectionCheckpointer(
        model,
        cfg.train.output_dir,
        match=try_get_key(cfg, "train.init_checkpoint_match", default="auto"),
        trainer=trainer,
        **ema.may_get_ema_checkpointer(cfg, model),
    )
    window = 20
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.EMAHook(cfg, model) if cfg.train.model_ema.enabled else None,
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    if checkpointer.resumed_from:
        # the checkpoint holds the iteration that was just finished
        start_iter = trainer.iter + 1
        if start_iter > cfg.train.max_iter:
            logger.warning(_nothing_to_train(checkpointer.resumed_from, start_iter, cfg.train.max_iter))
            return
        logger.info(f"Resuming from {checkpointer.resumed_from} at iteration {start_iter}.")
        if start_iter == cfg.train.max_iter:
            logger.info(f"All {start_iter} iterations of train.max_iter={cfg.train.max_iter} are done: nothing to "
                        "train, only the final evaluation runs. To train longer, resume with a larger "
                        "train.max_iter.")
    else:
        start_iter = 0
    writer = None
    if comm.is_main_process():
        if args.resume:
            dropped = truncate_metrics_json(
                os.path.join(cfg.train.output_dir, "metrics.json"), start_iter - 1
            )
            if dropped:
                logger.info(f"Dropped {dropped} metrics.json line(s) after iteration "
                            f"{start_iter - 1} (written after the checkpoint resumed from).")
        # created after resuming, so that it appends to the trimmed files
        writer = hooks.PeriodicWriter(
            default_writers(cfg.train.output_dir, cfg.train.max_iter, window_size=window,
                            start_iter=start_iter),
            period=cfg.train.log_period,
            flush_period=cfg.train.checkpointer.period,
        )
    # writer, then checkpointer (last): a checkpoint is written only after everything its
    # iteration logged is on disk. The checkpointer runs on every rank (rank 0 writes) so that
    # each rank's RNG state goes into the file.
    trainer.register_hooks(
        [
            writer,
            hooks.PeriodicCheckpointer(
                checkpointer,
                period=cfg.train.checkpointer.period,
                max_to_keep=try_get_key(cfg, "train.checkpointer.max_to_keep", default=100),
                all_ranks=True,
            ),
        ]
    )
    trainer.train(start_iter, cfg.train.max_iter)


def _pin_train_batches(cfg):
    """On CUDA, ask the training loader for page-locked batches (``pin_memory``) unless the config decides: the
    model's non_blocking copies then overlap the previous step instead of waiting for it."""
    import inspect

    from detrex.config.targets import locate

    loader = try_get_key(cfg, "dataloader.train")
    if loader is None or not str(cfg.train.device).startswith("cuda") or "pin_memory" in loader:
        return
    target = loader.get("_target_")
    target = locate(target) if isinstance(target, str) else target
    try:
        accepts = "pin_memory" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        accepts = False
    if accepts:
        loader.pin_memory = True


def maybe_compile(cfg, model):
    """``train.compile=True``: torch.compile the detector's forward_raw (see detrex/engine/compile.py)."""
    if try_get_key(cfg, "train.compile", default=False):
        compile_model(model, **dict(try_get_key(cfg, "train.compile_kwargs", default=None) or {}))


def resolve_device(cfg):
    """Apply the CUDA -> CPU fallback to ``train.device`` (and ``model.device``).

    Returns the warning to log (after the logger is set up), or None.
    """
    device = str(try_get_key(cfg, "train.device", default="cuda"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        cfg.train.device = "cpu"
        model_device = try_get_key(cfg, "model.device")
        if isinstance(model_device, str) and model_device.startswith("cuda"):
            cfg.model.device = "cpu"
        return (
            f"train.device={device!r} but CUDA is not available: running on CPU. Set "
            "train.device=cpu to silence this warning."
        )
    return None


def load_config(args):
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    return cfg


def main(args):
    cfg = load_config(args)
    device_warning = resolve_device(cfg)
    default_setup(cfg, args)
    if device_warning:
        logger.warning(device_warning)

    if try_get_key(cfg, "train.fast_dev_run.enabled", default=False):
        cfg.train.max_iter = 20
        cfg.train.eval_period = 10
        cfg.train.log_period = 1

    if args.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        maybe_compile(cfg, model)
        model = create_ddp_model(model)
        ema.may_build_model_ema(cfg, model)
        DetectionCheckpointer(
            model,
            match=try_get_key(cfg, "train.init_checkpoint_match", default="auto"),
            **ema.may_get_ema_checkpointer(cfg, model),
        ).load(cfg.train.init_checkpoint, check_match=True)
        if cfg.train.model_ema.enabled and cfg.train.model_ema.use_ema_weights_for_eval_only:
            ema.apply_model_ema(model)
        print(do_test(cfg, model, eval_only=True))
    else:
        do_train(args, cfg)


def _backend_for(cfg) -> str:
    """gloo unless the (overridden) config trains on an available CUDA device."""
    if not torch.cuda.is_available():
        return "gloo"
    device = str(try_get_key(cfg, "train.device", default="cuda"))
    return "nccl" if device.startswith("cuda") else "gloo"


def _user_error_types():
    """Exceptions that mean bad input or a failed peer (not a bug): reported in one line."""
    import torch.distributed as dist

    from detrex.checkpoint import CheckpointError
    from detrex.config.overrides import ConfigKeyError, OverrideError
    from detrex.data.build import DatasetNotRegisteredError, EmptyDatasetError
    from detrex.data.detection_utils import BadImageError, SizeMismatchError

    types = [ConfigKeyError, OverrideError, CheckpointError, DatasetNotRegisteredError,
             EmptyDatasetError, BadImageError, SizeMismatchError, FileNotFoundError, IsADirectoryError,
             NotADirectoryError, PermissionError, FloatingPointError]
    for name in ("DistError", "DistBackendError", "DistNetworkError"):
        if hasattr(dist, name):
            types.append(getattr(dist, name))
    return tuple(types)


def _config_error_types():
    from detrex.config import ConfigFileNotFoundError
    from detrex.config.overrides import ConfigKeyError, OverrideError

    return (ConfigKeyError, OverrideError, ConfigFileNotFoundError)


def _error_line(e: BaseException) -> str:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    msg = " ".join(str(msg).split())  # one line
    return msg or type(e).__name__


def _report_and_exit(e: BaseException) -> None:
    import torch.distributed as dist

    if os.environ.get("DETREX_DEBUG"):
        raise e
    code = 2 if isinstance(e, _config_error_types()) else 1
    prefix = "train_net.py: error: "
    if comm.get_world_size() > 1:
        prefix += f"[rank {comm.get_rank()}] "
    if hasattr(dist, "DistError") and isinstance(e, dist.DistError):
        prefix += "a collective failed (a peer process died, hung or timed out): "
    sys.stderr.write(prefix + _error_line(e) + "\n")
    sys.stderr.flush()
    # the full traceback goes to log.txt only (file handlers of the detrex logger)
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, prefix + _error_line(e),
                               None, (type(e), e, e.__traceback__))
    for h in logger.handlers:
        if getattr(h, "stream", None) not in (None, sys.stdout, sys.stderr):
            try:
                h.handle(record)
                h.flush()
            except Exception:
                pass
    raise SystemExit(code)


_PEER_FAILURE_MARKERS = ("Connection reset by peer", "Connection closed by peer", "timed out",
                         "Timed out", "gloo/transport", "NCCL communicator was aborted",
                         "Broken pipe")


class PeerFailureError(RuntimeError):
    """A collective failed in a multi-process run: a peer process died, hung or timed out."""


def _as_peer_failure(e: BaseException):
    if comm.get_world_size() > 1 and isinstance(e, RuntimeError) and any(
        m in str(e) for m in _PEER_FAILURE_MARKERS
    ):
        return PeerFailureError(
            "a collective failed (a peer process died, hung or timed out; see the other ranks' "
            "log.txt.rank* files; $DETREX_DIST_TIMEOUT sets the timeout in seconds): "
            + str(e).splitlines()[0]
        )
    return None


def guarded_main(args):
    """``main(args)`` with known user errors and peer failures reported in one line (exit code 1
    or 2) instead of a traceback."""
    try:
        main(args)
    except _user_error_types() as e:
        _report_and_exit(e)
    except RuntimeError as e:
        peer = _as_peer_failure(e)
        if peer is None:
            raise
        peer.__traceback__ = e.__traceback__
        _report_and_exit(peer)


def cli(argv=None) -> None:
    args = default_argument_parser().parse_args(argv)
    try:
        if not args.config_file:
            raise FileNotFoundError("--config-file is required (a LazyConfig .py or .yaml file).")
        # validate the config (path, keys, types) once, before any process is started
        cfg = load_config(args)
        world = args.num_gpus * args.num_machines
        backend = _backend_for(cfg) if world > 1 or "WORLD_SIZE" in os.environ else None
    except _user_error_types() as e:
        _report_and_exit(e)
    import torch.multiprocessing as mp

    try:
        launch(
            guarded_main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
            backend=backend,
        )
    except mp.ProcessExitedException as e:
        # a worker exited (its error line, if any, is already on stderr); the launcher has
        # terminated the others
        if not (e.exit_code and e.exit_code > 0):  # killed by a signal: nothing was printed
            sys.stderr.write(f"train_net.py: error: {_error_line(e)}\n")
        raise SystemExit(e.exit_code if e.exit_code and e.exit_code > 0 else 1)


if __name__ == "__main__":
    cli()
