"""Trajectory diffusion: schedules, the local-consistency loss and samplers (no model code)."""

from ltdi_ray.diffusion.process import TrajectoryDiffusion, segment_ends, target_indices
from ltdi_ray.diffusion.schedules import SCHEDULES, Schedule

__all__ = ["SCHEDULES", "Schedule", "TrajectoryDiffusion", "segment_ends", "target_indices"]
