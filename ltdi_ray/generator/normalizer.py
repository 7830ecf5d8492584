"""Per-coordinate weight normalisation; its statistics travel with datasets and checkpoints."""

from __future__ import annotations

import torch


class WeightNormalizer:
    """theta ``(..., D)`` <-> (theta - mean) / max(std, floor)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, floor: float = 1e-3):
        self.mean = mean.float()
        self.std = std.float().clamp_min(floor)
        self.floor = floor

    def to(self, device) -> "WeightNormalizer":
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def normalize(self, theta: torch.Tensor) -> torch.Tensor:
        return (theta - self.mean) / self.std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean

    def state(self) -> dict:
        return {"mean": self.mean.cpu(), "std": self.std.cpu()}
