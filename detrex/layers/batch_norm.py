"""Normalization layers for CNN backbones: `FrozenBatchNorm2d` and the `get_norm` factory
(detectron2 names and semantics)."""

from typing import Callable, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FrozenBatchNorm2d", "get_norm"]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose statistics and affine parameters are fixed.

    `weight`, `bias`, `running_mean` and `running_var` are buffers (not parameters), so they never
    train and are saved in the state dict under the usual BatchNorm names. Computes
    ``(x - running_mean) / sqrt(running_var + eps) * weight + bias`` per channel.
    Following detectron2, `running_var` starts at ``1 - eps`` so a fresh layer is the identity.
    """

    _version = 3

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def scale_and_shift(self):
        """The frozen transform as ``x * scale + shift`` per channel: two ``(C,)`` tensors."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def _affine(self, dtype: torch.dtype):
        """``(scale, shift)`` shaped (1, C, 1, 1) in ``dtype``, kept until a buffer changes (a checkpoint load, a
        move to another device): the frozen statistics cost no operators per training step."""
        buffers = (self.weight, self.bias, self.running_mean, self.running_var)
        key = (dtype,) + tuple((t.data_ptr(), t._version) for t in buffers)
        cached = getattr(self, "_affine_cache", None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                scale, shift = self.scale_and_shift()
                cached = (key, scale.reshape(1, -1, 1, 1).to(dtype), shift.reshape(1, -1, 1, 1).to(dtype))
            self._affine_cache = cached
        return cached[1], cached[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            # An explicit affine transform keeps the backward pass cheap (no grads for the stats).
            if torch.compiler.is_compiling():  # traced: the compiler folds the constants itself
                scale, shift = self.scale_and_shift()
                scale, shift = scale.reshape(1, -1, 1, 1).to(x.dtype), shift.reshape(1, -1, 1, 1).to(x.dtype)
            else:
                scale, shift = self._affine(x.dtype)
            return x * scale + shift
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
        )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # Checkpoints converted from a regular BatchNorm may carry `num_batches_tracked`; it is meaningless here.
        state_dict.pop(prefix + "num_batches_tracked", None)
        version = local_metadata.get("version", None)
        if version is None or version < 2:
            # Very old detectron2 checkpoints stored no running statistics.
            if prefix + "running_mean" not in state_dict:
                state_dict[prefix + "running_mean"] = torch.zeros_like(self.running_mean)
            if prefix + "running_var" not in state_dict:
                state_dict[prefix + "running_var"] = torch.ones_like(self.running_var)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, eps={self.eps}"

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Return `module` with every BatchNorm/SyncBatchNorm replaced by a FrozenBatchNorm2d carrying
        the same statistics (in place for children; the top module may be replaced)."""
        bn_types = (nn.modules.batchnorm.BatchNorm2d, nn.modules.batchnorm.SyncBatchNorm)
        if isinstance(module, bn_types):
            res = cls(module.num_features, eps=module.eps)
            if module.affine:
                res.weight.data.copy_(module.weight.data)
                res.bias.data.copy_(module.bias.data)
            res.running_mean.data.copy_(module.running_mean.data)
            res.running_var.data.copy_(module.running_var.data)
            return res
        for name, child in module.named_children():
            new_child = cls.convert_frozen_batchnorm(child)
            if new_child is not child:
                module.add_module(name, new_child)
        return module


def get_norm(norm: Union[str, Callable[[int], nn.Module], None], out_channels: int) -> Optional[nn.Module]:
    """Build a normalization layer for `out_channels` channels.

    Args:
        norm: one of ``"FrozenBN"``, ``"BN"``, ``"SyncBN"``, ``"GN"`` (32 groups), ``"LN"`` (channel-wise
            LayerNorm via GroupNorm(1)), ``""``/None (no norm), or a callable ``channels -> nn.Module``.
    """
    if norm is None or norm == "":
        return None
    if callable(norm) and not isinstance(norm, str):
        return norm(out_channels)
    factories = {
        "FrozenBN": FrozenBatchNorm2d,
        "BN": nn.BatchNorm2d,
        "SyncBN": nn.SyncBatchNorm,
        "GN": lambda c: nn.GroupNorm(32, c),
        "LN": lambda c: nn.GroupNorm(1, c),
    }
    if norm not in factories:
        raise ValueError(f"get_norm: unknown norm {norm!r}; use one of {sorted(factories)} or a callable")
    return factories[norm](out_channels)
