"""Pick a diffusion variant by name; both expose the same training/sampling interface."""

from __future__ import annotations

from typing import Optional, Union

from ltdi_ray.diffusion.bridge import BridgeDiffusion
from ltdi_ray.diffusion.process import TrajectoryDiffusion
from ltdi_ray.diffusion.schedules import Schedule

VARIANTS = ("local_consistency", "bridge")
Diffusion = Union[TrajectoryDiffusion, BridgeDiffusion]


def make_diffusion(variant: str, schedule: str, steps: int, segments: int, parameterization: str = "x0",
                   weighting: str = "x0", clip: Optional[float] = None, bridge_noise: float = 0.5,
                   bridge_residual: bool = True, bridge_start_noise: float = 0.0,
                   segment_draw: str = "all") -> Diffusion:
    """The diffusion process for a variant; ``parameterization``/``weighting``/``clip`` apply to
    ``local_consistency`` only (the bridge always predicts its segment's end point)."""
    sched = Schedule.make(schedule, steps)
    if variant == "local_consistency":
        return TrajectoryDiffusion(sched, segments, parameterization, weighting, clip)
    if variant == "bridge":
        return BridgeDiffusion(sched, segments, bridge_noise, bridge_residual, bridge_start_noise, segment_draw)
    raise ValueError(f"unknown diffusion variant {variant!r} (known: {', '.join(VARIANTS)})")
