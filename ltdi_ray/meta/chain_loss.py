"""The sampled chain's own task loss (``train.chain_loss``; not in the paper).

The diffusion loss trains every segment on points of the true trajectory, but at test time the
chain walks from theta_0 on its own predictions, and what counts is the network it ends at. This
term walks the deterministic chain (the sampler the generator is used with: DDIM over
``diffusion.sample_steps``) from each task's start, differentiably, and adds the task's own loss
(cross-entropy or MSE) of the network it reaches on the task's pool: the episodic objective of
MAML and ProtoNet, applied to the generator's chain. Measured in docs/results/omniglot.md.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.func import vmap

from ltdi_ray.base_nets.paramspec import ParamSpec
from ltdi_ray.generator.normalizer import WeightNormalizer
from ltdi_ray.trajectories.inner import make_functional

StartFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # support (sx, sy) -> normalised starts (B, D)


class ChainLoss:
    """``(gen, diffusion, sx (B, K, ...), sy (B, K, ...), px (B, P, ...), py (B, P, ...)) -> weight * mean
    task loss`` of the chain's end on the pool ``(px, py)``; ``start`` is the generator's rule for
    where a task's chain begins, ``loss`` the family's ``loss(pred, y)``."""

    def __init__(self, net: torch.nn.Module, spec: ParamSpec, norm: WeightNormalizer, weight: float,
                 start: StartFn, loss: Callable, sample_steps: Optional[int]):
        self.spec, self.norm, self.weight, self.start, self.sample_steps = spec, norm, weight, start, sample_steps
        self.task_loss = make_functional(net, spec, loss)

    def __call__(self, gen, diffusion, sx: torch.Tensor, sy: torch.Tensor, px: torch.Tensor,
                 py: torch.Tensor) -> torch.Tensor:
        z = diffusion.sample(gen.denoiser, gen.cond(sx, sy), self.spec.dim, self.start(sx, sy), sampler="ddim",
                             sample_steps=self.sample_steps, differentiable=True)
        return self.weight * vmap(self.task_loss)(self.norm.denormalize(z), px, py).mean()
