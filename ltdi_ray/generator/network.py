"""The generator's network: a task encoder (support -> condition) and a denoiser over flat weights.

It holds no diffusion math: the process (``ltdi_ray.diffusion``) receives its denoiser as an argument.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class GeneratorNet(nn.Module):
    """Task encoder + denoiser; ``cond(support_x, support_y) -> (B, cond_dim)``."""

    def __init__(self, encoder: nn.Module, denoiser: nn.Module):
        super().__init__()
        self.encoder, self.denoiser = encoder, denoiser

    def cond(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: Optional[int] = None) -> torch.Tensor:
        """``(B, cond_dim)``, or ``(B, N, cond_dim)`` per-class tokens for heads (``ways``: N other than trained)."""
        return self.encoder(support_x, support_y) if ways is None else self.encoder(support_x, support_y, ways)
