"""Task encoders: a support set -> the condition vector c."""

from __future__ import annotations

import torch
from torch import nn


class SetEncoder(nn.Module):
    """Regression supports: an MLP over (x, y) pairs, mean-pooled, then an MLP.

    ``x (B, K, in_dim)``, ``y (B, K, out_dim)`` -> ``(B, cond_dim)``; invariant to the order of
    the K pairs.
    """

    def __init__(self, in_dim: int, out_dim: int, cond_dim: int, width: int = 128):
        super().__init__()
        self.point = nn.Sequential(nn.Linear(in_dim + out_dim, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                   nn.Linear(width, width))
        self.pool = nn.Sequential(nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, cond_dim))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.pool(self.point(torch.cat([x, y], dim=-1)).mean(dim=1))
