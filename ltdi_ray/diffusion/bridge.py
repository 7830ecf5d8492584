"""The ``bridge`` variant (this project's, not the paper's; docs/design.md 2.3): Brownian bridges between consecutive trajectory targets.

Segment i runs over steps (e_i, e_{i-1}] (e_0 = T) from target_{i-1} (target_0 = theta_0, where
sampling starts) to target_i. At local position l in [0, 1] (l = 1 at target_{i-1}, l = 0 at
target_i) the marginal is

    x = (1 - l) target_i + l target_{i-1} + s sqrt(l (1 - l)) eps,

with l warped by the noise schedule: l(u) = (1 - abar(u)) / (1 - abar(1)) for the fraction u of
the segment still ahead. The network predicts the segment's end point target_i from (x, t, c) (as the step target_i - x
with ``residual``, so late segments only learn a small correction);
a reverse step from l to l' < l is the bridge posterior pinned at the prediction,

    x' = target_hat + (l' / l) (x - target_hat) + s sqrt(l' (l - l') / l) z,

which is deterministic (DDIM-like, any step subset) when z is left out. Unlike the
local-consistency form, every segment's input distribution at its start is the previous
segment's end point, so the chain never sees an input it was not trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch

from ltdi_ray.diffusion.base import SAMPLERS, Denoiser, FromTheta0, segment_ends, target_indices
from ltdi_ray.diffusion.schedules import SCHEDULES, Schedule

SEGMENT_DRAWS = ("all", "one")  # every segment of every task per loss | one random segment per task


@dataclass(frozen=True)
class BridgeDiffusion(FromTheta0):
    """Training loss and samplers for k bridge segments from theta_0 to theta_M."""

    schedule: Schedule
    segments: int = 3
    noise: float = 0.5  # s: bridge noise in normalised-weight units
    residual: bool = True  # the network predicts target_i - x (a small step late in the trajectory)
    start_noise: float = 0.0  # noise on target_{i-1} in training (recovery from an imperfect start) and, for
    # the stochastic ddpm sampler, on theta_0 (a fresh start); ddim starts at theta_0 itself
    segment_draw: str = "all"  # all: every segment of every task in each loss; one: one random segment per row

    def __post_init__(self) -> None:
        if not 1 <= self.segments <= self.schedule.steps:
            raise ValueError(f"segments must be in [1, T={self.schedule.steps}], got {self.segments}")
        if self.noise < 0 or self.start_noise < 0:
            raise ValueError(f"bridge noises must be >= 0, got {self.noise} and {self.start_noise}")
        if self.segment_draw not in SEGMENT_DRAWS:
            raise ValueError(f"segment_draw must be all or one, got {self.segment_draw!r}")

    def checkpoint_indices(self, checkpoint_steps: Sequence[int]) -> List[int]:
        """Checkpoints used as targets: theta_0 then the k segment ends (k + 1 indices)."""
        return [0] + target_indices(checkpoint_steps, self.segments)

    def _segments(self, device) -> tuple:
        """Every segment's end e_i and start e_{i-1} (e_0 = T), ``(k,)`` each."""
        ends = segment_ends(self.steps, self.segments).to(device)
        return ends, torch.cat([ends.new_tensor([self.steps]), ends[:-1]])

    def _bounds(self, t: torch.Tensor):
        """Segment index (0-based), its end e_i and its length for steps ``t (N,)`` in [1, T]."""
        ends, starts = self._segments(t.device)
        seg = (t.unsqueeze(-1) <= ends.unsqueeze(0)).sum(-1)  # segments whose end is at or above t
        return seg, ends[seg], starts[seg] - ends[seg]

    def position(self, t: torch.Tensor) -> torch.Tensor:
        """l(t) in (0, 1] for t in (e_i, e_{i-1}] (t = e_{i-1} is l = 1), float64 ``(N,)``."""
        seg, end, length = self._bounds(t.clamp_min(1))
        u = ((t - end).double() / length.double()).clamp(0, 1)
        warp = SCHEDULES[self.schedule.name]
        return (1 - warp(u)) / (1 - warp(torch.ones_like(u)))

    def predict(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Network output -> predicted segment end."""
        return x + out if self.residual else out

    def draw(self, bsz: int, dim: int, generator: Optional[torch.Generator] = None,
             device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32) -> Dict[str, torch.Tensor]:
        """The randomness of one loss evaluation: rows of (task, segment) pairs (every segment of
        every task, or one random segment per task), a step t ~ U{e_i + 1..e_{i-1}}, its position
        l(t), bridge noise and start noise."""
        k = self.segments
        ends, starts = self._segments(device)
        if self.segment_draw == "all":
            task, seg = torch.arange(bsz, device=device).repeat_interleave(k), torch.arange(k, device=device).repeat(bsz)
        else:
            task = torch.arange(bsz, device=device)
            seg = torch.randint(0, k, (bsz,), generator=generator, device=device)
        u = torch.rand(len(seg), generator=generator, device=device, dtype=torch.float64)
        t = ends[seg] + 1 + torch.floor(u * (starts[seg] - ends[seg])).long()
        noise = torch.randn(2, len(seg), dim, generator=generator, device=device, dtype=dtype)
        return {"task": task, "seg": seg, "t": t, "lam": self.position(t).float(), "noise": noise[0],
                "start_noise": noise[1]}

    def training_loss(self, model: Denoiser, targets: torch.Tensor, cond: torch.Tensor,
                      generator: Optional[torch.Generator] = None,
                      draw: Optional[Dict[str, torch.Tensor]] = None,
                      extra_loss: Optional[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = None
                      ) -> torch.Tensor:
        """Mean squared error of the predicted segment end: targets ``(B, k + 1, D)`` (theta_0 first).

        The randomness comes from ``draw`` (see :meth:`draw`) or is drawn here from ``generator``.
        ``extra_loss(pred (N, D), end (N, D), task (N,))`` is added when given: a caller's own
        distance between predicted and true segment ends (the process does not know what it means).
        """
        bsz, _, dim = targets.shape
        draw = draw if draw is not None else self.draw(bsz, dim, generator, targets.device, targets.dtype)
        task, seg, t = draw["task"], draw["seg"], draw["t"]
        lam = draw["lam"].to(targets.dtype).unsqueeze(-1)
        end, begin = targets[task, seg + 1], targets[task, seg]
        begin = begin + self.start_noise * draw["start_noise"].to(targets.dtype)
        x = (1 - lam) * end + lam * begin + self.noise * (lam * (1 - lam)).sqrt() * draw["noise"].to(targets.dtype)
        pred = self.predict(model(x, t, cond[task]), x)
        loss = (pred - end).square().mean()
        return loss if extra_loss is None else loss + extra_loss(pred, end, task)

    def sample(self, model: Denoiser, cond: torch.Tensor, dim: int, start: torch.Tensor, sampler: str = "ddpm",
               sample_steps: Optional[int] = None, generator: Optional[torch.Generator] = None,
               return_chain: bool = False, differentiable: bool = False):
        """Walk the bridges from ``start`` (normalised theta_0, ``(N, D)`` or ``(D,)``; ddpm adds
        ``start_noise``) to theta_M.

        ``ddpm`` takes every step with bridge noise; ``ddim`` is deterministic over about
        ``sample_steps`` steps (every segment end is always visited). ``differentiable``: keep the
        graph (a training loss on the chain's end); otherwise no gradients are recorded.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be ddpm or ddim, got {sampler!r}")
        with torch.set_grad_enabled(differentiable):
            return self._walk(model, cond, dim, start, sampler, sample_steps, generator, return_chain)

    def _walk(self, model, cond, dim, start, sampler, sample_steps, generator, return_chain):
        n = cond.shape[0]
        x = start.to(cond.device, torch.float32).expand(n, dim).clone()
        if sampler == "ddpm" and self.start_noise > 0:  # a fresh start; ddim stays deterministic from theta_0
            x = x + self.start_noise * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        ends = segment_ends(self.steps, self.segments).tolist()
        grid = range(self.steps, -1, -1)
        if sampler == "ddim" and sample_steps:
            grid = torch.linspace(self.steps, 0, sample_steps + 1).round().long().tolist()
        grid = sorted(set(grid) | set(ends) | {self.steps}, reverse=True)
        chain = [(self.steps, x)]
        for cur, nxt in zip(grid[:-1], grid[1:]):
            t = torch.full((n,), cur, device=cond.device, dtype=torch.long)
            pred = self.predict(model(x, t, cond), x)
            lam = self.position(t)[0].item()
            lam_next = 0.0 if nxt in ends else self.position(t.new_full((1,), nxt))[0].item()
            ratio = lam_next / lam
            x = pred + ratio * (x - pred)
            if sampler == "ddpm" and lam_next > 0 and self.noise > 0:
                std = self.noise * (lam_next * (lam - lam_next) / lam) ** 0.5
                x = x + std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            chain.append((nxt, x))
        return (x, chain) if return_chain else x
