"""Fully connected base network for regression tasks (sinusoid: 1-40-40-1, D = 1,761)."""

from typing import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """ReLU MLP ``in_dim -> hidden... -> out_dim``; input ``(N, in_dim)`` -> output ``(N, out_dim)``."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int):
        super().__init__()
        widths = [in_dim, *hidden, out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = self._linear(layer, x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x

    @staticmethod
    def _linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        # A 1-wide input (sinusoid's x) as a broadcast product: under vmap, F.linear becomes a
        # K=1 batched matmul that measured 8x slower than this, forward and backward.
        if layer.in_features == 1:
            return x * layer.weight.squeeze(-1) + layer.bias
        return layer(x)
