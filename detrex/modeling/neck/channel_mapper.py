"""ChannelMapper neck: map backbone features to a common channel count (detrex's interface, after mmdet).

Used by Deformable-DETR-style detectors: each selected backbone feature goes through its own conv (+ norm
+ activation) to ``out_channels``; when more outputs than inputs are asked for, extra 3x3 stride-2 convs
extend the pyramid, the first from the last *input* feature, the following ones from the previous output.

State-dict names match detrex (so released checkpoints load): ``convs.{i}.conv.{weight,bias}``,
``convs.{i}.norm.*``, ``extra_convs.{j}.conv.*``, ``extra_convs.{j}.norm.*``.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = ["ChannelMapper"]

LayerSpec = Union[nn.Module, Callable[..., nn.Module], None]


class _ConvNormAct(nn.Module):
    """``conv`` -> optional ``norm`` -> optional ``activation`` (detrex's ConvNormAct state-dict layout)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
                 dilation: int, groups: int, bias: bool, norm: Optional[nn.Module], activation: Optional[nn.Module]):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              dilation=dilation, groups=groups, bias=bias)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def _fresh_layer(spec: LayerSpec, factory_args: tuple, what: str) -> Optional[nn.Module]:
    """A new, unshared layer from ``spec``: a module (deep-copied), a factory called with ``factory_args``, or None."""
    if spec is None:
        return None
    if isinstance(spec, nn.Module):
        return copy.deepcopy(spec)
    if callable(spec):
        layer = spec(*factory_args)
        if not isinstance(layer, nn.Module):
            raise TypeError(f"ChannelMapper: {what} factory must return an nn.Module, got {type(layer).__name__}")
        return layer
    raise TypeError(f"ChannelMapper: {what} must be an nn.Module, a factory returning one, or None; "
                    f"got {type(spec).__name__}")


def _channels_of(shape: Any, name: str) -> int:
    """Channel count from a ShapeSpec-like object (``.channels``), a mapping with ``"channels"``, or an int."""
    if isinstance(shape, int):
        channels = shape
    elif isinstance(shape, Mapping):
        channels = shape.get("channels")
    else:
        channels = getattr(shape, "channels", None)
    if not isinstance(channels, int) or channels <= 0:
        raise ValueError(f"ChannelMapper: input_shapes[{name!r}] must give a positive channel count "
                         f"(e.g. ShapeSpec(channels=2048)), got {shape!r}")
    return channels


class ChannelMapper(nn.Module):
    """Map backbone features to ``out_channels`` (Deformable-DETR's input projection; detrex ``ChannelMapper``).

    Args:
        input_shapes: backbone output name -> ``ShapeSpec`` (anything with ``.channels``; a mapping with
            ``"channels"`` or a plain int also works), e.g.
            ``{"res3": ShapeSpec(channels=512), "res4": ShapeSpec(channels=1024), "res5": ShapeSpec(channels=2048)}``.
        in_features: names of the features to map, in output order, e.g. ``["res3", "res4", "res5"]``.
        out_channels: channels of every output.
        kernel_size, stride, bias, groups, dilation: of the per-input convs (padding ``(kernel_size - 1) // 2``).
            ``kernel_size`` defaults to 3 as in detrex; Deformable-DETR configs pass 1.
        norm_layer: norm after each conv: a module (deep-copied per conv, e.g. ``nn.GroupNorm(32, 256)`` as
            detrex configs pass it), a factory called with ``out_channels``, or None.
        activation: activation after each norm: a module (deep-copied), a zero-argument factory such as
            ``nn.ReLU``, or None.
        num_outs: number of outputs; defaults to ``len(input_shapes)``. Outputs beyond ``len(in_features)`` come
            from extra 3x3 stride-2 convs (the first on the last input feature, the next on the previous output).

    ``forward(features)`` takes the backbone's dict of ``(B, C_i, H_i, W_i)`` tensors and returns a tuple of
    ``num_outs`` tensors ``(B, out_channels, H, W)``, strides of ``in_features`` then doubling.
    """

    def __init__(
        self,
        input_shapes: Dict[str, Any],
        in_features: Sequence[str],
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        bias: bool = True,
        groups: int = 1,
        dilation: int = 1,
        norm_layer: LayerSpec = None,
        activation: LayerSpec = None,
        num_outs: Optional[int] = None,
        **kwargs,
    ):
        super().__init__()
        in_features = list(in_features)
        if not in_features:
            raise ValueError("ChannelMapper: in_features is empty; name at least one backbone output")
        missing = [f for f in in_features if f not in input_shapes]
        if missing:
            raise KeyError(f"ChannelMapper: in_features {missing} not in input_shapes (keys: {list(input_shapes)})")
        in_channels = [_channels_of(input_shapes[f], f) for f in in_features]
        if num_outs is None:
            num_outs = len(input_shapes)
        if num_outs < len(in_features):
            raise ValueError(f"ChannelMapper: num_outs ({num_outs}) must be >= len(in_features) ({len(in_features)})")

        def block(c_in: int, k: int, s: int, pad: int) -> _ConvNormAct:
            return _ConvNormAct(c_in, out_channels, k, s, pad, dilation, groups, bias,
                                _fresh_layer(norm_layer, (out_channels,), "norm_layer"),
                                _fresh_layer(activation, (), "activation"))

        self.convs = nn.ModuleList(block(c, kernel_size, stride, (kernel_size - 1) // 2) for c in in_channels)
        self.extra_convs = None
        if num_outs > len(in_features):
            extra_in = [in_channels[-1]] + [out_channels] * (num_outs - len(in_features) - 1)
            self.extra_convs = nn.ModuleList(block(c, 3, 2, 1) for c in extra_in)

        self.input_shapes = input_shapes
        self.in_features = in_features
        self.out_channels = out_channels
        self.num_outs = num_outs

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        """``inputs``: feature name -> ``(B, C, H, W)``; returns ``num_outs`` maps with ``out_channels`` channels."""
        missing = [f for f in self.in_features if f not in inputs]
        if missing:
            raise KeyError(f"ChannelMapper: backbone outputs lack {missing} (got {list(inputs)}); check the "
                           f"backbone's out_features against the neck's in_features")
        outs: List[torch.Tensor] = [conv(inputs[f]) for conv, f in zip(self.convs, self.in_features)]
        if self.extra_convs is not None:
            x = inputs[self.in_features[-1]]
            for conv in self.extra_convs:
                x = conv(x)
                outs.append(x)
        return tuple(outs)
