"""What both diffusion variants share: the denoiser's signature, the samplers, and where the k segments
of a trajectory end, on the diffusion's step axis and on the saved checkpoints."""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t (N, D), t (N,), cond) -> (N, D)
SAMPLERS = ("ddpm", "ddim")  # every step with noise | deterministic over a subset of steps


def segment_ends(steps: int, segments: int) -> torch.Tensor:
    """e_i for i = 1..k: ``(k,)`` long, decreasing to e_k = 0."""
    i = torch.arange(1, segments + 1, dtype=torch.float64)
    return torch.round(steps * (segments - i) / segments).long()


def target_indices(checkpoint_steps: Sequence[int], segments: int) -> List[int]:
    """Checkpoint index of target i: the saved step nearest to i * M / k (target k = theta_M)."""
    steps = torch.as_tensor(checkpoint_steps, dtype=torch.float64)
    total = float(steps[-1])
    return [int(torch.argmin((steps - i * total / segments).abs())) for i in range(1, segments + 1)]


class FromTheta0:
    """What processes whose chains start at theta_0 share (the bridge, the hypernet control): T from their
    ``schedule``, and the part of a loss's draw that belongs to a data-parallel worker's tasks."""

    @property
    def steps(self) -> int:
        return self.schedule.steps

    @property
    def starts_from_theta0(self) -> bool:
        return True

    def subset(self, draw: Dict[str, torch.Tensor], rows: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The part of ``draw`` that belongs to target rows ``rows`` (sorted), renumbered 0..len-1,
        so a data-parallel worker reuses the global batch's randomness for its own tasks."""
        keep = torch.isin(draw["task"], rows)
        out = {key: value[keep] for key, value in draw.items()}
        out["task"] = torch.searchsorted(rows, out["task"])
        return out
