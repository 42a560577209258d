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
EMAHook, LRScheduler, PeriodicCheckpointer, EvalHook, PeriodicWriter.

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
from detrex.engine import ema  # noqa: E402
from detrex.utils import comm  # noqa: E402

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


def do_train(args, cfg):
    """Build model, optimizer, data, trainer, checkpointer and hooks; then train."""
    model = instantiate(cfg.model)
    logger.info("Model:\n{}".format(model))
    model.to(cfg.train.device)

    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)

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
        clip_grad_params=cfg.train.clip_grad.params if cfg.train.clip_grad.enabled else None,
        device=cfg.train.device,
    )
    checkpointer = DetectionCheckpointer(
        model,
        cfg.train.output_dir,
        trainer=trainer,
        **ema.may_get_ema_checkpointer(cfg, model),
    )
    window = 20
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.EMAHook(cfg, model) if cfg.train.model_ema.enabled else None,
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(
                checkpointer,
                period=cfg.train.checkpointer.period,
                max_to_keep=try_get_key(cfg, "train.checkpointer.max_to_keep", default=100),
            )
            if comm.is_main_process()
            else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter, window_size=window),
                period=cfg.train.log_period,
            )
            if comm.is_main_process()
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    if args.resume and checkpointer.has_checkpoint():
        # the checkpoint holds the iteration that was just finished
        start_iter = trainer.iter + 1
    else:
        start_iter = 0
    trainer.train(start_iter, cfg.train.max_iter)


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
        model = create_ddp_model(model)
        ema.may_build_model_ema(cfg, model)
        DetectionCheckpointer(model, **ema.may_get_ema_checkpointer(cfg, model)).load(
            cfg.train.init_checkpoint
        )
        if cfg.train.model_ema.enabled and cfg.train.model_ema.use_ema_weights_for_eval_only:
            ema.apply_model_ema(model)
        print(do_test(cfg, model, eval_only=True))
    else:
        do_train(args, cfg)


def _backend_for(args) -> str:
    """gloo unless the (overridden) config trains on an available CUDA device."""
    if not torch.cuda.is_available():
        return "gloo"
    try:
        cfg = load_config(args)
        device = str(try_get_key(cfg, "train.device", default="cuda"))
    except Exception:
        device = "cuda"
    return "nccl" if device.startswith("cuda") else "gloo"


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    world = args.num_gpus * args.num_machines
    backend = _backend_for(args) if world > 1 or "WORLD_SIZE" in os.environ else None
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        backend=backend,
    )
