"""Trajectory diffusion: schedules, the local-consistency and bridge processes, the hypernet control (no model code).

A process is small and parameter-free: the denoiser is an argument of its loss and its sampler.
"""

from ltdi_ray.diffusion.base import SAMPLERS, Denoiser, segment_ends, target_indices
from ltdi_ray.diffusion.bridge import SEGMENT_DRAWS, BridgeDiffusion
from ltdi_ray.diffusion.hypernet import HypernetProcess
from ltdi_ray.diffusion.local_consistency import (
           PARAMETERIZATIONS,
           WEIGHTINGS,
           LocalConsistencyDiffusion,
)
from ltdi_ray.diffusion.schedules import SCHEDULES, Schedule
from ltdi_ray.diffusion.variants import FROM_THETA0, VARIANTS, Diffusion, make_diffusion

__all__ = ["FROM_THETA0", "HypernetProcess", "PARAMETERIZATIONS", "SAMPLERS", "SCHEDULES", "SEGMENT_DRAWS", "VARIANTS", "WEIGHTINGS", "BridgeDiffusion",
           "Denoiser", "Diffusion", "LocalConsistencyDiffusion", "Schedule", "make_diffusion", "segment_ends",
           "target_indices"]
