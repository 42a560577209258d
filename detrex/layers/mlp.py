"""`MLP` (Linear-ReLU stack used for prediction heads) and `FFN` (the transformer feed-forward block)."""

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MLP", "FFN"]


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (none after the last), no dropout.

    Args:
        input_dim, hidden_dim, output_dim: feature sizes.
        num_layers: number of Linear layers (submodules ``layers.0`` ... ``layers.{num_layers-1}``).
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        self.num_layers = num_layers
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = F.relu(x)
        return x


class FFN(nn.Module):
    """Feed-forward block with residual: ``identity + Dropout(Linear(Dropout(act(Linear(x)))))``.

    State-dict layout (kept identical to detrex so released checkpoints load): ``activation.*`` (the
    activation module, registered first), ``layers.0.0`` (Linear in), ``layers.0.1`` (the same activation
    module, registered a second time), ``layers.0.2`` (Dropout), ``layers.1`` (Linear out), ``layers.2``
    (Dropout). With a parametric activation such as PReLU the checkpoint therefore holds its weight twice
    (``activation.weight`` and ``layers.0.1.weight``), as one shared tensor.

    Args:
        embed_dim: input (and by default output) channels.
        feedforward_dim: hidden channels.
        output_dim: output channels (default ``embed_dim``).
        num_fcs: number of Linear layers (>= 2).
        activation: activation module (default ReLU); DAB-DETR uses ``nn.PReLU()``.
        ffn_drop: dropout probability.
        fc_bias: bias in the Linear layers.
        add_identity: add the residual connection.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        feedforward_dim: int = 1024,
        output_dim: int = None,
        num_fcs: int = 2,
        activation: nn.Module = None,
        ffn_drop: float = 0.0,
        fc_bias: bool = True,
        add_identity: bool = True,
    ):
        super().__init__()
        if num_fcs < 2:
            raise ValueError(f"FFN: num_fcs must be >= 2, got {num_fcs}")
        self.embed_dim = embed_dim
        self.feedforward_dim = feedforward_dim
        self.num_fcs = num_fcs
        # Registered before `layers`, so `activation.*` comes first in the state dict (detrex order).
        self.activation = activation if activation is not None else nn.ReLU(inplace=True)
        output_dim = embed_dim if output_dim is None else output_dim
        layers = []
        in_channels = embed_dim
        for _ in range(num_fcs - 1):
            layers.append(
                nn.Sequential(
                    nn.Linear(in_channels, feedforward_dim, bias=fc_bias),
                    self.activation,
                    nn.Dropout(ffn_drop),
                )
            )
            in_channels = feedforward_dim
        layers.append(nn.Linear(feedforward_dim, output_dim, bias=fc_bias))
        layers.append(nn.Dropout(ffn_drop))
        self.layers = nn.Sequential(*layers)
        self.add_identity = add_identity

    def forward(self, x: torch.Tensor, identity: torch.Tensor = None) -> torch.Tensor:
        """x: (..., embed_dim); identity defaults to x."""
        out = self.layers(x)
        if not self.add_identity:
            return out
        return (x if identity is None else identity) + out
