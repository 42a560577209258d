"""Training hooks, registered by ``tools/train_net.py`` in this order (= execution order):

1. :class:`IterationTimer` - per-step ``time`` scalar, overall speed at the end;
2. :class:`EMAHook` - only with ``train.model_ema.enabled``;
3. :class:`LRScheduler` - logs ``lr`` and steps the schedule;
4. :class:`EvalHook` - periodic and final evaluation (all ranks);
5. :class:`PeriodicWriter` - console line, ``metrics.json``, TensorBoard (rank 0); also writes at
   every checkpoint iteration;
6. :class:`PeriodicCheckpointer` - ``model_{iter:07d}.pth``, ``model_final.pth`` (all ranks
   compute the state, rank 0 writes).

Semantics follow detectron2's ``engine/hooks.py``. Difference from detrex's order (checkpointer
before evaluation and writer): the checkpoint of an iteration is written LAST, after that
iteration's evaluation results and metrics are on disk, so a run killed at any moment and
resumed from its newest checkpoint produces exactly the ``metrics.json`` of an uninterrupted run.
"""
import datetime
import logging
import time
from collections import Counter

import torch
from fvcore.common.checkpoint import PeriodicCheckpointer as _PeriodicCheckpointer
from fvcore.common.param_scheduler import ParamScheduler
from fvcore.common.timer import Timer

from detrex.solver.lr_scheduler import LRMultiplier
from detrex.utils import comm
from detrex.utils.events import EventWriter

from . import ema
from .train_loop import HookBase

__all__ = [
    "CallbackHook",
    "IterationTimer",
    "PeriodicWriter",
    "PeriodicCheckpointer",
    "LRScheduler",
    "EvalHook",
    "EMAHook",
]

logger = logging.getLogger(__name__)


class CallbackHook(HookBase):
    """A hook from plain functions ``f(trainer)``."""

    def __init__(self, *, before_train=None, after_train=None, before_step=None, after_step=None):
        self._before_train = before_train
        self._before_step = before_step
        self._after_step = after_step
        self._after_train = after_train

    def before_train(self):
        if self._before_train:
            self._before_train(self.trainer)

    def after_train(self):
        if self._after_train:
            self._after_train(self.trainer)
        # the functions may be closures holding the trainer; drop them
        del self._before_train, self._after_train
        del self._before_step, self._after_step

    def before_step(self):
        if self._before_step:
            self._before_step(self.trainer)

    def after_step(self):
        if self._after_step:
            self._after_step(self.trainer)


class IterationTimer(HookBase):
    """Puts the wall time of each step as ``time``; logs the overall speed after training.

    The first ``warmup_iter`` steps are excluded from the speed summary.
    """

    def __init__(self, warmup_iter: int = 3):
        self._warmup_iter = warmup_iter
        self._step_timer = Timer()
        self._start_time = time.perf_counter()
        self._total_timer = Timer()

    def before_train(self):
        self._start_time = time.perf_counter()
        self._total_timer.reset()
        self._total_timer.pause()

    def after_train(self):
        total_time = time.perf_counter() - self._start_time
        total_time_minus_hooks = self._total_timer.seconds()
        hook_time = total_time - total_time_minus_hooks
        num_iter = self.trainer.storage.iter + 1 - self.trainer.start_iter - self._warmup_iter
        if num_iter > 0 and total_time_minus_hooks > 0:
            logger.info(
                "Overall training speed: {} iterations in {} ({:.4f} s / it)".format(
                    num_iter,
                    str(datetime.timedelta(seconds=int(total_time_minus_hooks))),
                    total_time_minus_hooks / num_iter,
                )
            )
        logger.info(
            "Total training time: {} ({} on hooks)".format(
                str(datetime.timedelta(seconds=int(total_time))),
                str(datetime.timedelta(seconds=int(hook_time))),
            )
        )

    def before_step(self):
        self._step_timer.reset()
        self._total_timer.resume()

    def after_step(self):
        iter_done = self.trainer.storage.iter - self.trainer.start_iter + 1
        if iter_done >= self._warmup_iter:
            sec = self._step_timer.seconds()
            self.trainer.storage.put_scalars(time=sec)
        else:
            self._start_time = time.perf_counter()
            self._total_timer.reset()
        self._total_timer.pause()


class PeriodicWriter(HookBase):
    """Calls every writer's ``write()`` every ``period`` iterations and at the last iteration."""

    def __init__(self, writers, period: int = 20, flush_period: int = 0):
        self._writers = writers
        for w in writers:
            assert isinstance(w, EventWriter), w
        self._period = period
        # also write every `flush_period` iterations (train_net passes the checkpoint period and
        # runs this hook before the checkpointer): a checkpoint then never marks as done an
        # iteration whose metrics are not on disk, so metrics.json is exact after a resume
        self._flush_period = flush_period

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if next_iter % self._period == 0 or (
            self._flush_period > 0 and next_iter % self._flush_period == 0
        ) or (
            self.trainer.iter == self.trainer.max_iter - 1
        ):
            for writer in self._writers:
                writer.write()

    def after_train(self):
        for writer in self._writers:
            # flush what was put after the last periodic write (e.g. final evaluation)
            writer.write()
            writer.close()


class PeriodicCheckpointer(_PeriodicCheckpointer, HookBase):
    """fvcore's ``PeriodicCheckpointer`` as a hook.

    Saves ``model_{iter:07d}.pth`` when ``(iter + 1) % period == 0`` and ``model_final.pth`` at
    ``iter >= max_iter - 1``; keeps at most ``max_to_keep`` periodic files. Each file holds the
    checkpointer's ``model`` and checkpointables plus ``"iteration"``. Files are written
    atomically by :class:`~detrex.checkpoint.DetectionCheckpointer`.

    ``all_ranks=True``: the hook is registered on EVERY process (the checkpointer writes only on
    rank 0); the trainer's state is then computed on all ranks at the same iterations, which lets
    it gather every rank's RNG state into the file (exact multi-process resume). Only rank 0
    deletes old files.
    """

    def __init__(self, checkpointer, period: int, max_iter=None, max_to_keep=None,
                 file_prefix: str = "model", all_ranks: bool = False):
        super().__init__(checkpointer, period, max_iter=max_iter, max_to_keep=max_to_keep,
                         file_prefix=file_prefix)
        self.all_ranks = all_ranks
        if not comm.is_main_process():
            self.max_to_keep = None  # never delete files from non-main ranks

    def before_train(self):
        self.max_iter = self.trainer.max_iter
        if self.all_ranks:
            self.trainer.gather_rng_states = True

    def after_step(self):
        it = self.trainer.iter
        if (it + 1) % self.period == 0 or (self.max_iter is not None and it >= self.max_iter - 1):
            # losses still on the device are read first: a non-finite one stops the run before the save
            self.trainer.flush_metrics()
        self.step(it)


class LRScheduler(HookBase):
    """Logs the LR of the largest param group as ``lr`` and steps the scheduler every iteration.

    ``scheduler`` may be a torch LR scheduler or an fvcore ``ParamScheduler`` (a multiplier on
    [0, 1)); the latter is wrapped in :class:`~detrex.solver.LRMultiplier` in ``before_train``
    with ``last_iter = trainer.iter - 1``, so a resumed run continues the exact LR curve.

    The checkpointed state holds the run's ``max_iter``. A run resumed with another
    ``train.max_iter`` follows the ParamScheduler over the NEW length (the schedule is stretched,
    or compressed: ``lr(iter) = base_lr * multiplier(iter / new max_iter)``, as a fresh run of
    that length), and one log line says so with the multiplier before and after the change.
    """

    def __init__(self, optimizer=None, scheduler=None):
        self._optimizer = optimizer
        self._scheduler = scheduler
        self._checkpoint_max_iter = None  # max_iter of the run a resumed checkpoint came from

    def before_train(self):
        self._optimizer = self._optimizer or self.trainer.optimizer
        if isinstance(self.scheduler, ParamScheduler):
            self._log_schedule_change(self.scheduler)
            self._scheduler = LRMultiplier(
                self._optimizer, self.scheduler, self.trainer.max_iter,
                last_iter=self.trainer.iter - 1,
            )
        self._best_param_group_id = LRScheduler.get_best_param_group_id(self._optimizer)

    def _log_schedule_change(self, multiplier: ParamScheduler) -> None:
        old, new, it = self._checkpoint_max_iter, self.trainer.max_iter, self.trainer.iter
        if old is None or old == new or it >= new:
            return
        before = multiplier(it / old) if it < old else multiplier(1.0)
        logger.info(
            f"train.max_iter is {new}, the resumed checkpoint's run had {old}: the LR schedule is "
            f"{'stretched' if new > old else 'compressed'} to {new} iterations (it follows "
            f"iteration / {new}); LR multiplier at iteration {it}: {before:.4g} in the old schedule, "
            f"{multiplier(it / new):.4g} now."
        )

    @staticmethod
    def get_best_param_group_id(optimizer) -> int:
        # the group with the most parameters; if all have the same lr, the first
        largest_group = max(len(g["params"]) for g in optimizer.param_groups)
        if largest_group == 1:
            lr_count = Counter([g["lr"] for g in optimizer.param_groups])
            lr = lr_count.most_common()[0][0]
            for i, g in enumerate(optimizer.param_groups):
                if g["lr"] == lr:
                    return i
        for i, g in enumerate(optimizer.param_groups):
            if len(g["params"]) == largest_group:
                return i
        return 0

    def after_step(self):
        lr = self._optimizer.param_groups[self._best_param_group_id]["lr"]
        self.trainer.storage.put_scalar("lr", lr, smoothing_hint=False)
        self.scheduler.step()

    @property
    def scheduler(self):
        return self._scheduler or self.trainer.scheduler

    def state_dict(self):
        state = {}
        if isinstance(self.scheduler, torch.optim.lr_scheduler.LRScheduler):
            state = dict(self.scheduler.state_dict())
        trainer = self.trainer
        if trainer is not None and getattr(trainer, "max_iter", None) is not None:
            state["max_iter"] = int(trainer.max_iter)
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        max_iter = state_dict.pop("max_iter", None)
        self._checkpoint_max_iter = None if max_iter is None else int(max_iter)
        if isinstance(self.scheduler, torch.optim.lr_scheduler.LRScheduler):
            logger.info("Loading scheduler from state_dict ...")
            self.scheduler.load_state_dict(state_dict)
        # a ParamScheduler is rebuilt from trainer.iter in before_train: nothing to load


class EvalHook(HookBase):
    """Run ``eval_function()`` every ``eval_period`` iterations and after training.

    The function returns a (nested) dict of floats, e.g. ``{"bbox": {"AP": 40.1}}``; it is
    flattened to ``"bbox/AP"`` keys and put into the storage (no smoothing). Runs on all ranks
    (the function must handle distribution); a barrier follows. The periodic evaluation is
    skipped at the last iteration because ``after_train`` evaluates then.
    """

    def __init__(self, eval_period: int, eval_function, eval_after_train: bool = True):
        self._period = eval_period
        self._func = eval_function
        self._eval_after_train = eval_after_train

    def _do_eval(self):
        results = self._func()
        if results:
            assert isinstance(results, dict), (
                f"Eval function must return a dict. Got {results!r} instead."
            )
            flattened_results = _flatten_results_dict(results)
            for k, v in flattened_results.items():
                try:
                    v = float(v)
                except Exception as e:
                    raise ValueError(
                        "[EvalHook] eval_function should return a nested dict of float. "
                        f"Got '{k}: {v}' instead."
                    ) from e
            self.trainer.storage.put_scalars(**flattened_results, smoothing_hint=False)
        comm.synchronize()

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if self._period > 0 and next_iter % self._period == 0:
            if next_iter != self.trainer.max_iter:
                self._do_eval()

    def after_train(self):
        # only if training finished (iter == max_iter after the loop)
        if self._eval_after_train and self.trainer.iter + 1 >= self.trainer.max_iter:
            self._do_eval()
        del self._func  # may hold references to model/data


def _flatten_results_dict(results, prefix: str = "") -> dict:
    out = {}
    for k, v in results.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flatten_results_dict(v, key))
        else:
            out[key] = v
    return out


class EMAHook(HookBase):
    """Update the EMA state (``model.ema_state``) after every step.

    Built from ``train.model_ema`` (``decay``, ``device``); expects
    :func:`detrex.engine.ema.may_build_model_ema` to have attached ``model.ema_state``.
    """

    def __init__(self, cfg, model):
        model = ema._unwrap(model)
        model_ema = cfg.train.model_ema
        if not model_ema.enabled:
            raise ValueError("EMAHook needs train.model_ema.enabled=True")
        if not hasattr(model, "ema_state"):
            raise RuntimeError("Call detrex.engine.ema.may_build_model_ema(cfg, model) first.")
        self.model = model
        self.ema = model.ema_state
        self.device = model_ema.device or ""
        self.ema_updater = ema.EMAUpdater(model.ema_state, decay=model_ema.decay,
                                          device=self.device)

    def before_train(self):
        if self.ema.has_inited():
            # e.g. restored from a checkpoint (loaded on CPU): move next to the model
            target = self.device or next(self.model.parameters()).device
            self.ema.to(target)
        else:
            self.ema_updater.init_state(self.model)

    def after_train(self):
        pass

    def before_step(self):
        pass

    def after_step(self):
        if not self.model.training:
            return
        self.ema_updater.update(self.model)
