"""Low-precision copies of the weights for bfloat16 autocast, refreshed with one multi-tensor copy per step.

Under ``torch.autocast(dtype=bfloat16)`` every ``Linear``/``Conv`` casts its float32 weight and bias to bfloat16 in
every iteration (one kernel each), and its backward casts the weight gradients back (one more each): about 600
extra kernels per iteration for a DETR, which on a launch-bound GPU cost more than bfloat16 saves. `WeightCopies`
keeps a bfloat16 copy of those weights instead: the forward runs on the copies (autocast finds them already in
bfloat16 and casts nothing), their gradients are copied into the float32 weights' gradients with one multi-tensor
copy after the backward, and the copies are refreshed from the updated float32 weights with one multi-tensor copy
after the optimizer step. The float32 weights stay the optimizer's and the checkpoint's. The arithmetic is exactly
autocast's (same roundings in the same places), only the launches differ.

Which weights: the parameters of ``nn.Linear`` and ``nn.Conv*`` modules and the packed input projections of the
attention modules (``in_proj_weight``/``in_proj_bias``), the tensors autocast casts anyway. Norms, embeddings and
everything else stay float32. Not with DistributedDataParallel (its gradient hooks sit on the float32 weights): the
trainer falls back to plain autocast there.
"""
import contextlib
import logging
from typing import Dict, List

import torch
import torch.nn as nn

__all__ = ["WeightCopies", "autocast_weights"]

logger = logging.getLogger(__name__)

_IN_PROJ = ("in_proj_weight", "in_proj_bias")


def autocast_weights(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``{name: parameter}`` of the weights autocast casts to low precision: Linear/Conv parameters and packed
    attention input projections (each parameter once, under its first name)."""
    found, seen = {}, set()
    for module_name, module in model.named_modules():
        conv_or_linear = isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not (conv_or_linear or name in _IN_PROJ):
                continue
            seen.add(id(p))
            found[f"{module_name}.{name}" if module_name else name] = p
    return found


def _all_modules(model: nn.Module) -> List[nn.Module]:
    """Every distinct module object of ``model`` (a module registered under two names is listed once)."""
    seen, out = set(), []
    for _, module in model.named_modules(remove_duplicate=False):
        if id(module) not in seen:
            seen.add(id(module))
            out.append(module)
    return out


class WeightCopies:
    """Low-precision copies of a model's autocast weights (see the module docstring).

    Use, per training step::

        copies.refresh_if_stale()           # first step (and after a checkpoint load)
        with copies.swapped():               # the forward sees the copies
            loss = model(batch)
        loss.backward()
        copies.gradients_to_weights()        # copy gradients into the float32 weights' .grad
        optimizer.step()
        copies.refresh()                     # copy the updated weights into the low-precision copies
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16):
        self.model = model
        self.dtype = dtype
        weights = autocast_weights(model)
        self.names: List[str] = list(weights)
        self.weights: List[torch.Tensor] = list(weights.values())
        self.copies: List[torch.Tensor] = []
        # every (module, attribute) that holds one of the weights: shared modules appear under several names
        index = {id(w): i for i, w in enumerate(self.weights)}
        self._slots = [
            (module, name, index[id(p)])
            for module in _all_modules(model)
            for name, p in module._parameters.items()
            if p is not None and id(p) in index
        ]
        self._grad_buffers: List[torch.Tensor] = [None] * len(self.weights)
        self._versions = None

    def _current_versions(self):
        return [(w.data_ptr(), w._version) for w in self.weights]

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the float32 weights into the copies (one multi-tensor copy)."""
        if not self.copies:
            self.copies = [torch.empty_like(w, dtype=self.dtype).requires_grad_(w.requires_grad)
                           for w in self.weights]
        if self.copies:
            torch._foreach_copy_(self.copies, [w.detach() for w in self.weights])
        self._versions = self._current_versions()

    def refresh_if_stale(self) -> None:
        """`refresh` when a weight changed outside the optimizer step (a checkpoint load, EMA, first use)."""
        if self._versions != self._current_versions():
            self.refresh()

    @contextlib.contextmanager
    def swapped(self):
        """Inside, the model's autocast weights are the low-precision copies (every alias of a shared module)."""
        for module, name, i in self._slots:
            module._parameters[name] = self.copies[i]
        try:
            yield
        finally:
            for module, name, i in self._slots:
                module._parameters[name] = self.weights[i]

    @torch.no_grad()
    def gradients_to_weights(self) -> None:
        """Copy the copies' gradients into the float32 weights' ``.grad`` (one multi-tensor copy) and clear them."""
        dst, src = [], []
        for i, (w, c) in enumerate(zip(self.weights, self.copies)):
            if c.grad is None:
                continue
            if self._grad_buffers[i] is None:
                self._grad_buffers[i] = torch.empty_like(w)
            w.grad = self._grad_buffers[i]
            dst.append(w.grad)
            src.append(c.grad)
            c.grad = None
        if dst:
            torch._foreach_copy_(dst, src)
