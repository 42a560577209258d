"""Activation checkpointing of transformer layers (gradient checkpointing; Chen et al. 2016, "Training Deep
Nets with Sublinear Memory Cost"; detrex offers it per layer sequence since its PR #200).

A layer with ``use_checkpoint = True`` keeps only its inputs during the forward pass and recomputes its
activations during backward (``torch.utils.checkpoint`` in its non-reentrant mode): the memory of everything
saved for backward inside the layer is traded for about one extra forward pass of it. Outputs and gradients
are those of the plain layer: the RNG state (CPU, and the CUDA/XPU device of the inputs) is restored before
the recomputation, so dropout draws the same masks twice.

- `CheckpointableLayer`: mixin of every encoder/decoder layer (``BaseTransformerLayer`` and the KS
  triple-attention layers). ``layer(...)`` is checkpointed when ``use_checkpoint`` is set and autograd is
  recording; `run_checkpointed` does the same for other entry points (the KS layers' ``forward_teachers``).
- `set_activation_checkpoint(model, enabled)`: the switch. It walks the model and sets ``use_checkpoint`` on
  the layers of every `TransformerLayerSequence` (encoders and decoders of all detectors). ``tools/train_net.py``
  calls it for ``train.activation_checkpoint=True``.

Forward hooks of a checkpointed layer (and of its submodules) fire twice per training step (forward and
recomputation); evaluation under ``torch.no_grad()`` is never checkpointed.
"""

import logging
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

__all__ = ["CheckpointableLayer", "set_activation_checkpoint"]

logger = logging.getLogger(__name__)


class CheckpointableLayer:
    """Mixin for ``nn.Module`` layers: checkpoint ``__call__`` (and `run_checkpointed` calls) when
    ``use_checkpoint`` is True. Put it before ``nn.Module`` in the bases."""

    use_checkpoint: bool = False

    def run_checkpointed(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, recomputed in backward when ``use_checkpoint`` is set and grad is enabled.

        Keyword tensors are passed to ``torch.utils.checkpoint`` positionally: it finds the device whose RNG
        state it must restore (dropout on CUDA) among the positional arguments only."""
        if not (self.use_checkpoint and torch.is_grad_enabled()):
            return fn(*args, **kwargs)
        num_args, keys = len(args), tuple(kwargs)

        def call(*flat):
            return fn(*flat[:num_args], **dict(zip(keys, flat[num_args:])))

        return checkpoint(call, *args, *kwargs.values(), use_reentrant=False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.run_checkpointed(super().__call__, *args, **kwargs)


def set_activation_checkpoint(model: nn.Module, enabled: bool = True) -> int:
    """Switch activation checkpointing of every encoder/decoder layer of ``model`` on (or off).

    Every ``layers`` entry of every `TransformerLayerSequence` in ``model`` (a DDP wrapper is fine) gets
    ``use_checkpoint = enabled``; the sequences get it too, for the record. Returns the number of layers
    switched. A layer that is not a `CheckpointableLayer` (a custom module) raises ``TypeError`` naming it.
    """
    from .transformer import TransformerLayerSequence

    count = 0
    for seq_name, seq in model.named_modules():
        if not isinstance(seq, TransformerLayerSequence):
            continue
        seq.use_checkpoint = bool(enabled)
        for i, layer in enumerate(seq.layers):
            if not isinstance(layer, CheckpointableLayer):
                raise TypeError(
                    f"set_activation_checkpoint: layer '{seq_name}.layers.{i}' is a {type(layer).__name__}, which "
                    "cannot be checkpointed; derive it from detrex.layers.CheckpointableLayer (before nn.Module)."
                )
            layer.use_checkpoint = bool(enabled)
            count += 1
    if enabled and count == 0:
        logger.warning("set_activation_checkpoint: the model has no TransformerLayerSequence; nothing is "
                       "checkpointed.")
    return count
