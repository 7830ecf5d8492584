"""Denoisers over flat weight vectors: a residual MLP with FiLM from (timestep, task condition).

No diffusion math here: a denoiser maps ``(x_t (N, D), t (N,), c (N, C)) -> (N, D)`` and the
diffusion process decides what the output means (eps, x0 or v).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DenoiserPreset:
    width: int
    depth: int
    cond_dim: int


PRESETS = {
    "tiny": DenoiserPreset(width=64, depth=2, cond_dim=32),  # tests
    "small": DenoiserPreset(width=256, depth=3, cond_dim=64),  # the 2-core CPU default (2.7M parameters at D=1761)
    "base": DenoiserPreset(width=1024, depth=6, cond_dim=256),  # GPUs
}


def timestep_embedding(t: torch.Tensor, steps: int, dim: int) -> torch.Tensor:
    """Sinusoidal features of t / T: ``(N,)`` -> ``(N, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angle = (t.float() / steps * 1000.0).unsqueeze(-1) * freqs
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


class FiLMBlock(nn.Module):
    """Pre-norm residual MLP block whose hidden units are scaled and shifted by the embedding."""

    def __init__(self, width: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        self.film = nn.Linear(emb_dim, 4 * width)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(emb).chunk(2, dim=-1)
        return h + self.fc2(torch.nn.functional.silu(self.fc1(self.norm(h)) * (1 + scale) + shift))


class ResMLPDenoiser(nn.Module):
    """``(x_t (N, D), t (N,), c (N, cond_dim)) -> (N, D)``."""

    def __init__(self, dim: int, steps: int, preset: DenoiserPreset):
        super().__init__()
        self.steps = steps
        w = preset.width
        self.t_dim = w
        self.embed = nn.Sequential(nn.Linear(w + preset.cond_dim, w), nn.SiLU(), nn.Linear(w, w))
        self.inp = nn.Linear(dim, w)
        self.blocks = nn.ModuleList(FiLMBlock(w, w) for _ in range(preset.depth))
        self.out_norm = nn.LayerNorm(w)
        self.out = nn.Linear(w, dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        emb = self.embed(torch.cat([timestep_embedding(t, self.steps, self.t_dim), c], dim=-1))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(self.out_norm(h))
