"""Swin Transformer backbone (Liu et al., ICCV 2021, "Swin Transformer: Hierarchical Vision
Transformer using Shifted Windows") with detectron2's interface and parameter names.

The module layout and names follow the official Swin detection backbone, which detectron2
(``detectron2.modeling.backbone.SwinTransformer``) and detrex use, so these load as is:

* the authors' detector checkpoints (e.g. KS-DAB-DETR-Swin-T): ``backbone.patch_embed.proj.*``,
  ``backbone.layers.{i}.blocks.{j}.{norm1,attn.qkv,attn.proj,attn.relative_position_bias_table,
  attn.relative_position_index,norm2,mlp.fc1,mlp.fc2}.*``, ``backbone.layers.{i}.downsample.
  {reduction,norm}.*`` (stages 0..2), ``backbone.norm{k}.*`` for each output index ``k``;
* the official ImageNet classification checkpoints (``swin_tiny_patch4_window7_224.pth``, ...) after
  the small renaming in :mod:`detrex.checkpoint.swin_conversion` (``norm.*`` -> ``norm3.*``, drop
  ``head.*`` and ``attn_mask``).

Detection behaviour (differs from the classification model): any input size; feature maps are padded
(bottom/right, zeros) to multiples of the patch size and of the window size; shifted windows are
always used, with the attention mask computed for the padded size of each input.

Outputs: ``"p{i}"`` for ``i`` in ``out_indices``: (B, embed_dim * 2**i, ceil(H / s_i), ceil(W / s_i))
with stride ``s_i = patch_size * 2**i`` (4, 8, 16, 32 for the default patch size 4).
"""

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as torch_checkpoint

from .backbone import Backbone

__all__ = ["SwinTransformer", "window_partition", "window_reverse"]


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Split (B, H, W, C) into non-overlapping windows: (B * nW, window_size, window_size, C).

    H and W must be multiples of ``window_size``; windows are ordered batch-major, then row-major.
    """
    b, h, w, c = x.shape
    x = x.reshape(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)


def window_reverse(windows: torch.Tensor, window_size: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, ws, ws, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // window_size) * (w // window_size))
    x = windows.reshape(b, h // window_size, w // window_size, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, zero a sample's residual branch with
    probability ``drop_prob`` and scale kept ones by 1 / (1 - drop_prob); identity in eval."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        noise = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * noise.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """Two-layer feed-forward network ``fc1 -> act -> drop -> fc2 -> drop`` on the last dimension."""

    def __init__(self, in_features: int, hidden_features: int, act_layer=nn.GELU, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a (window_size x window_size) window, with a learned
    relative position bias (one value per head and relative offset).

    Parameters: ``qkv`` (Linear C -> 3C), ``proj`` (Linear C -> C),
    ``relative_position_bias_table`` ((2*ws-1)^2, num_heads); buffer ``relative_position_index``
    (ws^2, ws^2) (persistent, as in the official code, so checkpoints carry it).
    """

    def __init__(
        self,
        dim: int,
        window_size: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"WindowAttention: dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale if qk_scale is not None else (dim // num_heads) ** -0.5
        self.attn_drop = attn_drop

        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        # index into the table for every (query, key) pair of a window: (dy + ws - 1) * (2ws - 1) + (dx + ws - 1)
        coords = torch.stack(
            torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
        ).flatten(1)  # (2, ws*ws): row, column of each token
        rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N)
        index = (rel[0] + window_size - 1) * (2 * window_size - 1) + (rel[1] + window_size - 1)
        self.register_buffer("relative_position_index", index)

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        """(num_heads, N, N) additive attention bias, N = window_size**2."""
        n = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B * nW, N, C) window tokens; mask: (nW, N, N) with 0 / -100 (shifted windows) or None.
        Returns (B * nW, N, C)."""
        bw, n, c = x.shape
        qkv = self.qkv(x).view(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B * nW, heads, N, head_dim)
        bias = self.relative_position_bias().unsqueeze(0)  # (1, heads, N, N)
        if mask is not None:
            nw = mask.shape[0]
            # group windows per image so the (nW, heads, N, N) mask broadcasts over the batch
            q, k, v = (t.reshape(bw // nw, nw * self.num_heads, n, -1) for t in (q, k, v))
            bias = (bias + mask.unsqueeze(1)).reshape(1, nw * self.num_heads, n, n)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=bias.to(q.dtype),
            dropout_p=self.attn_drop if self.training else 0.0,
            scale=self.scale,
        )
        out = out.reshape(bw, self.num_heads, n, -1).transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(out))


class SwinTransformerBlock(nn.Module):
    """Pre-norm block: (shifted) window attention + MLP, each with a residual and drop-path."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer=nn.GELU,
        norm_layer=nn.LayerNorm,
    ):
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"SwinTransformerBlock: shift_size {shift_size} must be in [0, {window_size})")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(self, x: torch.Tensor, h: int, w: int, attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """x: (B, H*W, C); attn_mask: (nW, N, N) for the padded size, used when shifted.
        Returns (B, H*W, C)."""
        b, length, c = x.shape
        if length != h * w:
            raise ValueError(f"SwinTransformerBlock: got {length} tokens for a {h}x{w} feature map")
        ws = self.window_size
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        # zero-pad bottom/right to window multiples (after the norm, as the official detection code)
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        windows = window_partition(x, ws).reshape(-1, ws * ws, c)
        windows = self.attn(windows, mask=attn_mask if self.shift_size > 0 else None)
        x = window_reverse(windows.reshape(-1, ws, ws, c), ws, hp, wp)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = x[:, :h, :w, :].reshape(b, h * w, c)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 patch merging: concatenate each 2x2 neighbourhood (4C), LayerNorm, Linear 4C -> 2C.

    The concatenation order is (row 0, col 0), (row 1, col 0), (row 0, col 1), (row 1, col 1), as in
    the official code; pretrained ``reduction`` weights depend on it. Odd sizes are zero-padded.
    """

    def __init__(self, dim: int, norm_layer=nn.LayerNorm):
        super().__init__()
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(4 * dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """x: (B, H*W, C) -> (B, ceil(H/2)*ceil(W/2), 2C)."""
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class BasicLayer(nn.Module):
    """One stage: ``depth`` blocks alternating regular and shifted windows, then optional merging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: Sequence[float] = (),
        norm_layer=nn.LayerNorm,
        downsample: bool = False,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.use_checkpoint = use_checkpoint
        drop_path = list(drop_path) if len(drop_path) else [0.0] * depth
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim,
                num_heads,
                window_size=window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop=drop,
                attn_drop=attn_drop,
                drop_path=drop_path[i],
                norm_layer=norm_layer,
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim, norm_layer=norm_layer) if downsample else None

    def shifted_window_mask(self, h: int, w: int, device) -> torch.Tensor:
        """(nW, N, N) mask for shifted windows on the padded (Hp, Wp) map: 0 between tokens of the
        same region before the cyclic shift, -100 otherwise (the official value)."""
        ws, ss = self.window_size, self.shift_size
        hp, wp = math.ceil(h / ws) * ws, math.ceil(w / ws) * ws
        region = torch.zeros((1, hp, wp, 1), device=device)
        bounds = (slice(0, -ws), slice(-ws, -ss), slice(-ss, None))
        for i, hs in enumerate(bounds):
            for j, wsl in enumerate(bounds):
                region[:, hs, wsl, :] = i * 3 + j
        region = window_partition(region, ws).reshape(-1, ws * ws)
        diff = region.unsqueeze(1) - region.unsqueeze(2)
        return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)

    def forward(self, x: torch.Tensor, h: int, w: int) -> Tuple[torch.Tensor, torch.Tensor, int, int]:
        """x: (B, H*W, C). Returns (stage output (B, H*W, C), next-stage input, next H, next W)."""
        attn_mask = self.shifted_window_mask(h, w, x.device) if len(self.blocks) > 1 else None
        for blk in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = torch_checkpoint.checkpoint(blk, x, h, w, attn_mask, use_reentrant=False)
            else:
                x = blk(x, h, w, attn_mask)
        if self.downsample is None:
            return x, x, h, w
        return x, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: ``proj`` Conv(k=s=patch_size) + optional LayerNorm ``norm``.
    Input (B, C, H, W) is zero-padded bottom/right to patch multiples; output (B, D, H', W')."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96, norm_layer=None):
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (p - w % p) % p, 0, (p - h % p) % p))
        x = self.proj(x)
        if self.norm is not None:
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x


class SwinTransformer(Backbone):
    """Swin Transformer backbone (arguments and defaults as detectron2's ``SwinTransformer``).

    Args:
        pretrain_img_size: image size of the pre-training (only sizes ``absolute_pos_embed``).
        patch_size: patch size (stride of the first feature map).
        in_chans: input channels.
        embed_dim: channels of stage 0; stage i has ``embed_dim * 2**i``.
        depths: blocks per stage, e.g. (2, 2, 6, 2) Swin-T, (2, 2, 18, 2) Swin-S/B.
        num_heads: attention heads per stage, e.g. (3, 6, 12, 24) Swin-T/S, (4, 8, 16, 32) Swin-B.
        window_size: attention window (7 for the ``window7`` checkpoints).
        mlp_ratio: MLP hidden size / channels.
        qkv_bias, qk_scale: bias of the qkv projection; attention scale (default head_dim**-0.5).
        drop_rate, attn_drop_rate: dropout after projections / on attention weights.
        drop_path_rate: stochastic depth, increasing linearly from 0 over all blocks to this value.
        norm_layer: normalization class (LayerNorm).
        ape: add a learned absolute position embedding (not used by the Swin checkpoints).
        patch_norm: LayerNorm after the patch embedding.
        out_indices: stages to output as ``"p{i}"``; each gets its own LayerNorm ``norm{i}``.
        frozen_stages: -1 none; 0 freezes the patch embedding; 1 also ``absolute_pos_embed``;
            k >= 2 also stages 0..k-2. Frozen parts stay in eval mode.
        use_checkpoint: activation checkpointing in training (saves memory, costs time).
    """

    def __init__(
        self,
        pretrain_img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        norm_layer=nn.LayerNorm,
        ape: bool = False,
        patch_norm: bool = True,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        frozen_stages: int = -1,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        depths, num_heads = [int(d) for d in depths], [int(n) for n in num_heads]
        if len(depths) != len(num_heads) or len(depths) == 0:
            raise ValueError(
                f"SwinTransformer: depths {depths} and num_heads {num_heads} must be non-empty and of equal length"
            )
        out_indices = tuple(int(i) for i in out_indices)
        bad = [i for i in out_indices if not 0 <= i < len(depths)]
        if bad or not out_indices:
            raise ValueError(
                f"SwinTransformer: out_indices {out_indices} must be non-empty stage indices in "
                f"0..{len(depths) - 1}"
            )
        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.ape = ape
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.num_features = [int(embed_dim * 2**i) for i in range(self.num_layers)]

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, norm_layer if patch_norm else None)
        if ape:
            grid = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(p=drop_rate)

        n_blocks = sum(depths)  # stochastic depth per block, rising linearly from 0 to drop_path_rate
        dpr = [drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]
        self.layers = nn.ModuleList()
        for i in range(self.num_layers):
            self.layers.append(
                BasicLayer(
                    dim=self.num_features[i],
                    depth=depths[i],
                    num_heads=num_heads[i],
                    window_size=window_size,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                    norm_layer=norm_layer,
                    downsample=i < self.num_layers - 1,
                    use_checkpoint=use_checkpoint,
                )
            )
        for i in out_indices:
            self.add_module(f"norm{i}", norm_layer(self.num_features[i]))

        self._out_features = [f"p{i}" for i in out_indices]
        self._out_feature_channels = {f"p{i}": self.num_features[i] for i in out_indices}
        self._out_feature_strides = {f"p{i}": patch_size * 2**i for i in out_indices}
        self.apply(self._init_weights)
        self._freeze_stages()

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _frozen_modules(self):
        mods = []
        if self.frozen_stages >= 0:
            mods.append(self.patch_embed)
        if self.frozen_stages >= 2:
            mods.append(self.pos_drop)
            mods.extend(self.layers[i] for i in range(min(self.frozen_stages - 1, self.num_layers)))
        return mods

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False
        if self.frozen_stages >= 1 and self.ape:
            self.absolute_pos_embed.requires_grad = False

    def train(self, mode: bool = True) -> "SwinTransformer":
        super().train(mode)
        for m in self._frozen_modules():  # frozen parts keep dropout / drop-path off
            m.eval()
        return self

    @property
    def size_divisibility(self) -> int:
        return 32

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x: (B, C, H, W) normalized image batch. Returns ``{"p{i}": (B, C_i, ceil(H/s_i), ceil(W/s_i))}``."""
        if x.dim() != 4:
            raise ValueError(f"SwinTransformer takes a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        x = self.patch_embed(x)
        h, w = x.shape[-2:]
        if self.ape:
            x = x + F.interpolate(self.absolute_pos_embed, size=(h, w), mode="bicubic")
        x = self.pos_drop(x.flatten(2).transpose(1, 2))  # (B, H*W, C)
        outs = {}
        for i, layer in enumerate(self.layers):
            x_out, x, h_next, w_next = layer(x, h, w)
            if i in self.out_indices:
                x_out = getattr(self, f"norm{i}")(x_out)
                outs[f"p{i}"] = x_out.reshape(-1, h, w, self.num_features[i]).permute(0, 3, 1, 2).contiguous()
            if i == max(self.out_indices):
                break  # later stages do not contribute to any output
            h, w = h_next, w_next
        return outs
