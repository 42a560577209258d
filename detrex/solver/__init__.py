"""Optimizer parameter groups and LR schedules (detectron2's ``solver`` names)."""
from .build import (
    LRFactorByKeyword,
    backbone_lr_factor,
    get_default_optimizer_params,
    reduce_param_groups,
    resolve_optimizer_impl,
)
from .lr_scheduler import LRMultiplier, WarmupParamScheduler

__all__ = [
    "get_default_optimizer_params",
    "reduce_param_groups",
    "resolve_optimizer_impl",
    "backbone_lr_factor",
    "LRFactorByKeyword",
    "WarmupParamScheduler",
    "LRMultiplier",
]
