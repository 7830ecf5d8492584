"""The registry of diffusion variants: name -> the process built from ``diffusion.*`` config keys.

Every variant exposes the same interface (``draw``, ``subset``, ``training_loss``, ``sample``,
``checkpoint_indices``, ``starts_from_theta0``), so callers never ask which one they hold.
"""

from __future__ import annotations

from typing import Callable, Dict, Union

from ltdi_ray.diffusion.bridge import BridgeDiffusion
from ltdi_ray.diffusion.hypernet import HypernetProcess
from ltdi_ray.diffusion.local_consistency import LocalConsistencyDiffusion
from ltdi_ray.diffusion.schedules import Schedule

Diffusion = Union[LocalConsistencyDiffusion, BridgeDiffusion, HypernetProcess]

VARIANTS: Dict[str, Callable[[Schedule, object], Diffusion]] = {
    # the paper's: k local targets each reached by its own noising process, sampled from Gaussian noise
    "local_consistency": lambda sched, d: LocalConsistencyDiffusion(sched, d.segments, d.parameterization,
                                                                    d.weighting, d.clip),
    # ours: Brownian bridges theta_0 -> target_1 -> ... -> theta_M, sampled from theta_0
    "bridge": lambda sched, d: BridgeDiffusion(sched, d.segments, d.bridge_noise, d.bridge_residual,
                                               d.bridge_start_noise, d.segment_draw),
    # the control: no diffusion, one deterministic call theta_0 -> theta_M (diffusion.segments = 1)
    "hypernet": lambda sched, d: HypernetProcess(sched, d.bridge_residual),
}
# variants whose network predicts end points from chains that start at theta_0: the loss terms on those
# end points (train.function_loss, train.chain_loss) apply to them
FROM_THETA0 = ("bridge", "hypernet")


def make_diffusion(d) -> Diffusion:
    """The process a ``DiffusionConfig`` (the ``diffusion`` node) describes."""
    if d.variant not in VARIANTS:
        raise ValueError(f"unknown diffusion variant {d.variant!r} (known: {', '.join(VARIANTS)})")
    return VARIANTS[d.variant](Schedule.make(d.schedule, d.steps), d)
