"""``train.compile``: ``torch.compile`` of a detector's network, for training and evaluation.

What is compiled: the detector's ``forward_raw`` (backbone, neck, transformer and heads, in training also the KS
teachers and the denoising queries), in place, so the state dict, checkpoints and the eval path keep their names.
The criterion stays eager: its Hungarian assignment runs on the host between two device computations.

Image sizes: DETR training resizes every image to one of about a dozen shorter sides (and any aspect ratio), and
each batch has its own number of ground-truth boxes (and, for DN-DETR, of denoising queries). Compiling for
**dynamic shapes** (``dynamic=True``, the default here) traces one graph whose sizes are symbolic: it serves every
batch without recompiling. The alternative, padding to a few size buckets with static shapes, would still
recompile for every box count, pad up to about 10 % more pixels and change nothing in the result; dynamic shapes
cost a little speed per kernel instead. ``tests/engine/test_compile.py`` checks one graph, no recompile, over
several sizes and box counts (torch 2.14; the older dynamo of torch 2.6 recompiles for new sizes: 3 graphs for the
test's 3 batches, reused when those sizes come again), and losses equal to eager.
"""
import logging

import torch
from torch.nn.parallel import DataParallel, DistributedDataParallel

__all__ = ["compile_model", "DEFAULT_COMPILE_KWARGS"]

logger = logging.getLogger(__name__)

#: ``train.compile_kwargs`` when a config does not set them
DEFAULT_COMPILE_KWARGS = {"backend": "inductor", "dynamic": True}


def compile_model(model: torch.nn.Module, **compile_kwargs) -> torch.nn.Module:
    """Replace ``model.forward_raw`` by its ``torch.compile`` (in place; DDP/DataParallel wrappers are looked
    through). ``compile_kwargs`` go to ``torch.compile`` (default `DEFAULT_COMPILE_KWARGS`). Returns ``model``."""
    inner = model.module if isinstance(model, (DistributedDataParallel, DataParallel)) else model
    forward_raw = getattr(inner, "forward_raw", None)
    if forward_raw is None:
        raise ValueError(f"train.compile=True: {type(inner).__name__} has no forward_raw (the DETR detectors' "
                         "network call); set train.compile=False for this model")
    kwargs = dict(DEFAULT_COMPILE_KWARGS, **compile_kwargs)
    # No "duck shaping": it gives equal sizes one symbol, so a batch with 4 boxes (boxes (4, 4)) would tie the box
    # count to the coordinate dimension, specialize it and recompile for every other box count.
    import torch.fx.experimental._config as fx_config

    fx_config.use_duck_shape = False
    inner.forward_raw = torch.compile(forward_raw, **kwargs)
    logger.info(f"train.compile: {type(inner).__name__}.forward_raw compiled with {kwargs} (the first iteration "
                "of training and of evaluation compile; later ones reuse the graphs)")
    return model
