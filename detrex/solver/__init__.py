"""Optimizer parameter groups and LR schedules (detectron2's ``solver`` names)."""
from .build import (
    LRFactorByKeyword,
    backbone_lr_factor,
    get_default_optimizer_params,
    reduce_param_groups,
)
from .lr_scheduler import LRMultiplier, WarmupParamScheduler

__all__ = [
    "get_default_optimizer_params",
    "reduce_param_groups",
    "backbone_lr_factor",
    "LRFactorByKeyword",
    "WarmupParamScheduler",
    "LRMultiplier",
]
