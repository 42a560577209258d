"""Training engine: trainer, hooks, launch, argument parser and run setup (detectron2 names).

Everything runs on CPU as well as CUDA; ``train.device`` decides.
"""
from . import hooks
from .compile import compile_model
from .defaults import (
    create_ddp_model,
    default_argument_parser,
    default_setup,
    default_writers,
    enable_deterministic,
)
from .launch import launch
from .train_loop import HookBase, SimpleTrainer, Trainer, TrainerBase

__all__ = [
    "default_argument_parser",
    "default_setup",
    "default_writers",
    "create_ddp_model",
    "enable_deterministic",
    "launch",
    "HookBase",
    "TrainerBase",
    "SimpleTrainer",
    "Trainer",
    "hooks",
    "compile_model",
]
