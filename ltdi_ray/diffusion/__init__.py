"""Trajectory diffusion: schedules, the local-consistency and bridge losses and samplers (no model code)."""

from ltdi_ray.diffusion.bridge import BridgeDiffusion
from ltdi_ray.diffusion.process import TrajectoryDiffusion, segment_ends, target_indices
from ltdi_ray.diffusion.schedules import SCHEDULES, Schedule
from ltdi_ray.diffusion.variants import VARIANTS, Diffusion, make_diffusion

__all__ = ["SCHEDULES", "VARIANTS", "BridgeDiffusion", "Diffusion", "Schedule", "TrajectoryDiffusion",
           "make_diffusion", "segment_ends", "target_indices"]
