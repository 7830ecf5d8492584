"""Inner-loop optimisation trajectories: the diffusion targets (DESIGN 2.2)."""

from ltdi_ray.trajectories.batch import TrajectoryBatcher, initial_theta
from ltdi_ray.trajectories.inner import InnerOptimizer, evaluate, make_loss, make_metric, run_batched, run_per_task

__all__ = ["InnerOptimizer", "TrajectoryBatcher", "evaluate", "initial_theta", "make_loss", "make_metric",
           "run_batched", "run_per_task"]
