"""Noise schedules defined on u = t / T, so abar_T is small for any number of steps T.

Step t = 0 is clean and t = T is noise. Tensors are indexed by t = 0..T with abar_0 = 1 and
beta_0 = 0 (unused), so ``alpha[t] = abar[t] / abar[t - 1]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict

import torch

ABAR_FLOOR = 1e-5  # keeps alpha_T away from 0 for schedules whose abar(1) is exactly 0


def _vp_linear(u: torch.Tensor) -> torch.Tensor:
    # VP-SDE with beta(u) = 0.1 + 19.9 u: abar(u) = exp(-(0.1 u + 9.95 u^2)); alpha_T(T=20) = 0.38
    return torch.exp(-(0.1 * u + 9.95 * u**2))


def _cosine(u: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    f = lambda v: torch.cos((v + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(u) / f(torch.zeros_like(u))


def _sigmoid(u: torch.Tensor, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> torch.Tensor:
    v = lambda w: torch.sigmoid(torch.as_tensor(w / tau, dtype=u.dtype))  # noqa: E731
    return (v(end) - v((start + (end - start) * u))) / (v(end) - v(start))


SCHEDULES: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": _vp_linear, "cosine": _cosine, "sigmoid": _sigmoid,
}


@dataclass(frozen=True)
class Schedule:
    """``abar``, ``alpha``, ``beta`` as float64 tensors of length T + 1."""

    name: str
    steps: int
    abar: torch.Tensor

    @classmethod
    def make(cls, name: str, steps: int) -> "Schedule":
        if name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r} (known: {', '.join(SCHEDULES)})")
        u = torch.arange(steps + 1, dtype=torch.float64) / steps
        abar = SCHEDULES[name](u).clamp(ABAR_FLOOR, 1.0)
        abar[0] = 1.0
        abar = torch.minimum(abar, torch.cummin(abar, 0).values)  # monotone non-increasing
        return cls(name, steps, abar)

    @property
    def alpha(self) -> torch.Tensor:
        a = torch.ones_like(self.abar)
        a[1:] = self.abar[1:] / self.abar[:-1]
        return a

    @property
    def beta(self) -> torch.Tensor:
        return 1.0 - self.alpha
