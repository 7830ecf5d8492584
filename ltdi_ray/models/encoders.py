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


class ImagePrototypeEncoder(nn.Module):
    """Classification supports for whole-network generation: images ``(B, S, 1, H, W)``, labels ``(B, S)``
    -> ``(B, cond_dim)``.

    A small conv embedding of every image, the per-class means (prototypes) in label order,
    concatenated, then an MLP: the condition says which class is which row of the generated head.
    """

    def __init__(self, ways: int, cond_dim: int, width: int = 128, channels: int = 32):
        super().__init__()
        self.ways = ways
        conv = lambda i: [nn.Conv2d(i, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]  # noqa: E731
        self.embed = nn.Sequential(*conv(1), *conv(channels), *conv(channels), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                   nn.Linear(channels, width))
        self.proj = nn.Sequential(nn.SiLU(), nn.Linear(ways * width, width), nn.SiLU(), nn.Linear(width, cond_dim))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from ltdi_ray.models.heads import prototypes

        emb = self.embed(x.flatten(0, 1)).view(*x.shape[:2], -1)
        return self.proj(prototypes(emb, y, self.ways).flatten(1))
