"""LR schedules as multipliers of each group's base LR (detectron2 semantics).

A schedule is an fvcore ``ParamScheduler`` mapping training progress ``t = iter / max_iter`` in
[0, 1) to a multiplier. :class:`WarmupParamScheduler` prepends a warm-up; :class:`LRMultiplier`
turns the multiplier into a ``torch.optim`` LR scheduler stepped once per iteration:
``lr(iter) = base_lr(group) * multiplier(iter / max_iter)``.
"""
import logging
from typing import List

import torch
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    LinearParamScheduler,
    ParamScheduler,
)

__all__ = ["WarmupParamScheduler", "LRMultiplier"]

logger = logging.getLogger(__name__)


class WarmupParamScheduler(CompositeParamScheduler):
    """``scheduler`` with a warm-up over the first ``warmup_length`` fraction of training.

    The warm-up goes from ``warmup_factor * scheduler(0)`` to ``scheduler(warmup_length)``
    (``"linear"``), or stays at ``warmup_factor * scheduler(0)`` (``"constant"``). After it,
    ``scheduler`` is evaluated at the absolute progress (not rescaled), unless
    ``rescale_interval=True``. ``warmup_length=0`` disables the warm-up.
    """

    def __init__(
        self,
        scheduler: ParamScheduler,
        warmup_factor: float,
        warmup_length: float,
        warmup_method: str = "linear",
        rescale_interval: bool = False,
    ):
        if not 0.0 <= warmup_length < 1.0:
            raise ValueError(f"warmup_length must be in [0, 1), got {warmup_length}")
        end_value = scheduler(0.0) if rescale_interval else scheduler(warmup_length)
        start_value = warmup_factor * scheduler(0.0)
        if warmup_method == "constant":
            warmup = ConstantParamScheduler(start_value)
        elif warmup_method == "linear":
            warmup = LinearParamScheduler(start_value, end_value)
        else:
            raise ValueError(f"Unknown warmup method {warmup_method!r}; use 'linear' or 'constant'")
        super().__init__(
            [warmup, scheduler],
            interval_scaling=["rescaled", "rescaled" if rescale_interval else "fixed"],
            lengths=[warmup_length, 1 - warmup_length],
        )


class LRMultiplier(torch.optim.lr_scheduler.LRScheduler):
    """Per-iteration LR scheduler: ``lr = base_lr * multiplier(iter / max_iter)``.

    Args:
        optimizer: the optimizer whose groups' ``initial_lr`` are the base LRs.
        multiplier: an fvcore ``ParamScheduler`` on [0, 1).
        max_iter: total number of training iterations.
        last_iter: the iteration of the last ``step()``; ``-1`` to start fresh. On resume pass
            ``trainer.iter - 1`` (the groups must already carry ``initial_lr``, which the
            restored optimizer state provides).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, multiplier: ParamScheduler,
                 max_iter: int, last_iter: int = -1):
        if not isinstance(multiplier, ParamScheduler):
            raise ValueError(
                "LRMultiplier(multiplier=) must be an fvcore ParamScheduler, got "
                f"{type(multiplier).__name__}"
            )
        self._multiplier = multiplier
        self._max_iter = int(max_iter)
        if last_iter != -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        super().__init__(optimizer, last_epoch=last_iter)

    def state_dict(self):
        # the multiplier is rebuilt from the config; only the position is state
        return {"base_lrs": self.base_lrs, "last_epoch": self.last_epoch}

    def get_lr(self) -> List[float]:
        if self.last_epoch > self._max_iter:
            raise ValueError(
                f"LRMultiplier: iteration {self.last_epoch} is past max_iter={self._max_iter}; the schedule is "
                "defined on iterations 0..max_iter. Train with a larger train.max_iter."
            )
        multiplier = self._multiplier(self.last_epoch / self._max_iter)
        return [base_lr * multiplier for base_lr in self.base_lrs]
