"""ResNet (He et al. 2016) with detectron2's module layout and parameter names, so detectron2 /
torchvision-converted checkpoints (``stem.conv1.*``, ``res2.0.conv1.*``, ``res2.0.shortcut.*``) load as is.

Depths 18/34 use `BasicBlock`, 50/101/152 `BottleneckBlock`. Stage ``res{k}`` has stride 2**k.
"""

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from detrex.layers.batch_norm import FrozenBatchNorm2d, get_norm
from detrex.layers.wrappers import Conv2d

from .backbone import Backbone

__all__ = ["CNNBlockBase", "BasicStem", "BasicBlock", "BottleneckBlock", "ResNet", "make_stage"]

_BLOCKS_PER_STAGE = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}


def _msra_fill(conv: nn.Conv2d) -> None:
    """Kaiming-normal (fan_out, ReLU) weights and zero bias, as detectron2's ``c2_msra_fill``."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.constant_(conv.bias, 0)


class CNNBlockBase(nn.Module):
    """A block with ``in_channels``, ``out_channels`` and ``stride`` attributes that can be frozen."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def freeze(self) -> "CNNBlockBase":
        """Stop gradients to all parameters and turn BatchNorms into FrozenBatchNorm2d."""
        for p in self.parameters():
            p.requires_grad = False
        FrozenBatchNorm2d.convert_frozen_batchnorm(self)
        return self


def _projection_shortcut(in_channels: int, out_channels: int, stride: int, norm: str) -> Optional[Conv2d]:
    """1x1 conv + norm projecting the residual when the channel count changes (else None: identity)."""
    if in_channels == out_channels:
        return None
    return Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False,
                  norm=get_norm(norm, out_channels))


class BasicStem(CNNBlockBase):
    """7x7 stride-2 conv + norm + ReLU, then 3x3 stride-2 max-pool (total stride 4)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm: str = "BN"):
        super().__init__(in_channels, out_channels, 4)
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=7,
            stride=2,
            padding=3,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        _msra_fill(self.conv1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BasicBlock(CNNBlockBase):
    """Two 3x3 convs with a residual (ResNet-18/34). The projection ``shortcut`` exists when the
    channel count changes."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, norm: str = "BN"):
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = _projection_shortcut(in_channels, out_channels, stride, norm)
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=3,
            stride=stride,
            padding=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        self.conv2 = Conv2d(
            out_channels,
            out_channels,
            kernel_size=3,
            stride=1,
            padding=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        for layer in (self.shortcut, self.conv1, self.conv2):
            if layer is not None:
                _msra_fill(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu_(self.conv1(x)))
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out + shortcut)


class BottleneckBlock(CNNBlockBase):
    """1x1 reduce -> 3x3 -> 1x1 expand, with a residual (ResNet-50 and deeper).

    Args:
        bottleneck_channels: channels of the 3x3 conv.
        stride: applied in the first 1x1 conv if ``stride_in_1x1`` (MSRA weights) else in the 3x3 conv
            (torchvision weights; the DETR configs use False).
        num_groups, dilation: of the 3x3 conv.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm: str = "BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
    ):
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = _projection_shortcut(in_channels, out_channels, stride, norm)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(
            in_channels,
            bottleneck_channels,
            kernel_size=1,
            stride=stride_1x1,
            bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv2 = Conv2d(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            bias=False,
            groups=num_groups,
            dilation=dilation,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv3 = Conv2d(
            bottleneck_channels, out_channels, kernel_size=1, bias=False, norm=get_norm(norm, out_channels)
        )
        for layer in (self.shortcut, self.conv1, self.conv2, self.conv3):
            if layer is not None:
                _msra_fill(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out + shortcut)


def make_stage(block_class, num_blocks: int, *, in_channels: int, out_channels: int, **kwargs) -> List[nn.Module]:
    """Create ``num_blocks`` blocks; a keyword ending in ``_per_block`` is a list giving one value per
    block (e.g. ``stride_per_block=[2, 1, 1]``), other keywords go to every block."""
    blocks = []
    for i in range(num_blocks):
        block_kwargs = {}
        for k, v in kwargs.items():
            if k.endswith("_per_block"):
                if len(v) != num_blocks:
                    raise ValueError(f"make_stage: {k} has {len(v)} values for {num_blocks} blocks")
                block_kwargs[k[: -len("_per_block")]] = v[i]
            else:
                block_kwargs[k] = v
        blocks.append(block_class(in_channels=in_channels, out_channels=out_channels, **block_kwargs))
        in_channels = out_channels
    return blocks


class ResNet(Backbone):
    """ResNet backbone: ``stem`` then stages ``res2`` .. ``res5`` (nn.Sequential of blocks).

    Args:
        stem: e.g. `BasicStem`.
        stages: list of lists of blocks (see `make_default_stages`). Stages after the deepest requested
            output feature are not built (detectron2 behaviour).
        num_classes: if set, add global pooling and a ``linear`` classifier (output ``"linear"``).
        out_features: names to return, from ``"stem"``, ``"res2"``..``"res5"`` (``"linear"``);
            default: the last stage.
        freeze_at: 0 = train everything, 1 = freeze the stem, k >= 2 = also freeze ``res2``..``res{k}``.
    """

    def __init__(
        self, stem: nn.Module, stages, num_classes: Optional[int] = None, out_features=None, freeze_at: int = 0
    ):
        super().__init__()
        self.stem = stem
        self.num_classes = num_classes
        current_stride = stem.stride
        self._out_feature_strides = {"stem": current_stride}
        self._out_feature_channels = {"stem": stem.out_channels}
        stages = [list(s) for s in stages]
        stage_order = {"res2": 1, "res3": 2, "res4": 3, "res5": 4, "linear": len(stages)}
        if out_features is not None:
            out_features = [str(f) for f in out_features]
            bad = [f for f in out_features if f != "stem" and f not in stage_order]
            if bad:
                raise ValueError(f"ResNet: unknown out_features {bad}; available: stem, res2..res5, linear")
            num_stages = max(stage_order.get(f, 0) for f in out_features)
            stages = stages[:num_stages]
        self.stage_names = []
        for i, blocks in enumerate(stages):
            if len(blocks) == 0:
                raise ValueError(f"ResNet: stage {i} has no blocks")
            name = f"res{i + 2}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            for block in blocks:
                current_stride *= block.stride
            self._out_feature_strides[name] = current_stride
            self._out_feature_channels[name] = blocks[-1].out_channels
        self.stage_names = tuple(self.stage_names)
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.linear = nn.Linear(self._out_feature_channels[self.stage_names[-1]], num_classes)
            nn.init.normal_(self.linear.weight, std=0.01)
            self._out_feature_channels["linear"] = num_classes
        if out_features is None:
            out_features = ["linear"] if num_classes is not None else [self.stage_names[-1]]
        self._out_features = list(out_features)
        for f in self._out_features:
            if f not in self._out_feature_channels:
                raise ValueError(
                    f"ResNet: out feature {f!r} is not produced; available: {list(self._out_feature_channels)}"
                )
        self.freeze(freeze_at)

    @property
    def stages(self) -> List[nn.Module]:
        return [getattr(self, name) for name in self.stage_names]

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x: (B, C, H, W). Returns the requested features, e.g. ``{"res5": (B, 2048, H/32, W/32)}``."""
        if x.dim() != 4:
            raise ValueError(f"ResNet takes a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        outputs = {}
        x = self.stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        if self.num_classes is not None:
            x = torch.flatten(self.avgpool(x), 1)
            x = self.linear(x)
            if "linear" in self._out_features:
                outputs["linear"] = x
        return outputs

    def freeze(self, freeze_at: int = 0) -> "ResNet":
        """Freeze the stem (freeze_at >= 1) and stages res2..res{freeze_at} (freeze_at >= 2)."""
        if freeze_at >= 1:
            self.stem.freeze()
        for idx, name in enumerate(self.stage_names, start=2):
            if freeze_at >= idx:
                for block in getattr(self, name).children():
                    block.freeze()
        return self

    @staticmethod
    def make_stage(block_class, num_blocks: int, *, in_channels: int, out_channels: int, **kwargs):
        return make_stage(block_class, num_blocks, in_channels=in_channels, out_channels=out_channels, **kwargs)

    @staticmethod
    def make_default_stages(
        depth: int,
        block_class=None,
        stem_out_channels: int = 64,
        res2_out_channels: Optional[int] = None,
        **kwargs,
    ) -> List[List[nn.Module]]:
        """The four stages of a standard ResNet of the given depth.

        Args:
            depth: 18, 34, 50, 101 or 152.
            block_class: default BasicBlock for depth < 50, else BottleneckBlock.
            stem_out_channels: input channels of res2 (must match the stem's out_channels).
            res2_out_channels: output channels of res2 (default 64 basic / 256 bottleneck); each later
                stage doubles it. Smaller values give narrow models for quick experiments.
            **kwargs: passed to every block, e.g. ``norm="FrozenBN"``, ``stride_in_1x1=False``.
        """
        if depth not in _BLOCKS_PER_STAGE:
            raise ValueError(
                f"ResNet.make_default_stages: depth must be one of {sorted(_BLOCKS_PER_STAGE)}, got {depth}"
            )
        bottleneck = depth >= 50
        if block_class is None:
            block_class = BottleneckBlock if bottleneck else BasicBlock
        if res2_out_channels is None:
            res2_out_channels = 256 if bottleneck else 64
        out_channels = [res2_out_channels * 2**i for i in range(4)]
        in_channels = [stem_out_channels] + out_channels[:-1]
        if not bottleneck:
            kwargs.pop("stride_in_1x1", None)  # meaningless for basic blocks
        stages = []
        for n, first_stride, cin, cout in zip(_BLOCKS_PER_STAGE[depth], [1, 2, 2, 2], in_channels, out_channels):
            stage_kwargs = dict(kwargs)
            if bottleneck:
                stage_kwargs["bottleneck_channels"] = cout // 4
            stages.append(
                make_stage(
                    block_class,
                    n,
                    stride_per_block=[first_stride] + [1] * (n - 1),
                    in_channels=cin,
                    out_channels=cout,
                    **stage_kwargs,
                )
            )
        return stages
