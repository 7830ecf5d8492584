"""The ``hypernet`` process: a control, not a diffusion. One deterministic call maps theta_0 to theta_M.

The same denoiser, condition and loss terms as the bridge, trained to predict the final weights from
(theta_0, t = T, c) (as the step theta_M - theta_0 with ``residual``) with no noise and no intermediate
targets; sampling is that one call. What the bridge scores beyond it is what its chain of segments and
its noise add (docs/results/protocol.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch

from ltdi_ray.diffusion.base import Denoiser, FromTheta0
from ltdi_ray.diffusion.schedules import Schedule


@dataclass(frozen=True)
class HypernetProcess(FromTheta0):
    """Training loss and sampler of the one-call regressor theta_0 -> theta_M."""

    schedule: Schedule  # only its T: the step the network is told it is at
    residual: bool = True  # the network predicts theta_M - theta_0

    def checkpoint_indices(self, checkpoint_steps: Sequence[int]) -> List[int]:
        """theta_0 and theta_M."""
        return [0, len(checkpoint_steps) - 1]

    def draw(self, bsz: int, dim: int, generator: Optional[torch.Generator] = None,
             device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32) -> Dict[str, torch.Tensor]:
        """One row per task at t = T (nothing random: the signature is the bridge's)."""
        return {"task": torch.arange(bsz, device=device), "t": torch.full((bsz,), self.steps, device=device)}

    def _call(self, model: Denoiser, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = model(x, t, cond)
        return x + out if self.residual else out

    def training_loss(self, model: Denoiser, targets: torch.Tensor, cond: torch.Tensor,
                      generator: Optional[torch.Generator] = None,
                      draw: Optional[Dict[str, torch.Tensor]] = None,
                      extra_loss: Optional[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = None
                      ) -> torch.Tensor:
        """Mean squared error of the predicted theta_M: targets ``(B, 2, D)`` (theta_0, theta_M); ``extra_loss``
        as the bridge's (a caller's own distance between predicted and true end points)."""
        bsz, _, dim = targets.shape
        draw = draw if draw is not None else self.draw(bsz, dim, generator, targets.device, targets.dtype)
        task = draw["task"]
        end = targets[task, -1]
        pred = self._call(model, targets[task, 0], draw["t"], cond[task])
        loss = (pred - end).square().mean()
        return loss if extra_loss is None else loss + extra_loss(pred, end, task)

    def sample(self, model: Denoiser, cond: torch.Tensor, dim: int, start: torch.Tensor, sampler: str = "ddim",
               sample_steps: Optional[int] = None, generator: Optional[torch.Generator] = None,
               return_chain: bool = False, differentiable: bool = False):
        """The one call from ``start`` (normalised theta_0, ``(N, D)`` or ``(D,)``); the sampler arguments
        are accepted and ignored (there is nothing to sample)."""
        n = cond.shape[0]
        x = start.to(cond.device, torch.float32).expand(n, dim)
        with torch.set_grad_enabled(differentiable):
            out = self._call(model, x, torch.full((n,), self.steps, device=cond.device, dtype=torch.long), cond)
        return (out, [(self.steps, x.clone()), (0, out)]) if return_chain else out
