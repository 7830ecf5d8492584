"""Local-consistency (trajectory) diffusion, the paper's form (docs/design.md 2.3). Parameter-free: the
denoiser is an argument.

k segments. Target i (i = 1..k) is reached at step e_i = round(T (k - i) / k) (e_k = 0), and
segment i's forward process uses the local product abar^(i)_t = abar_t / abar_{e_i}:

    x_t = sqrt(abar^(i)_t) target_i + sqrt(1 - abar^(i)_t) eps,  t in (e_i, T].

Training matches the network's implied *global* DDPM posterior mean to segment i's posterior mean,

    mu_hat(x_t, t) = a_t x0_hat + b_t x_t   vs   mu_i = a^(i)_t target_i + b^(i)_t x_t,

so the ordinary global reverse chain follows each segment's own reverse step and passes near
each local target on its way to the last one. With ``weighting="eps"`` the loss is divided by
beta_t^2 / (alpha_t (1 - abar_t)); for k = 1 and the eps parameterisation it is then exactly the
standard DDPM loss ||eps_hat - eps||^2, and in general it is the loss of docs/design.md 2.3.1
||sqrt(1 - abar^(i)_t) f - sqrt(1 - abar_t) eps||^2 up to a per-t weight (same minimiser).
``weighting="mean"`` is plain mean matching (weight a_t^2 on x0 errors), which kept the x0
parameterisation stable in the prototype; ``weighting="x0"`` weighs x0 errors equally at every t.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from ltdi_ray.diffusion.base import Denoiser, segment_ends, target_indices
from ltdi_ray.diffusion.schedules import Schedule

PARAMETERIZATIONS = ("eps", "x0", "v")
WEIGHTINGS = ("eps", "mean", "x0")


@dataclass(frozen=True)
class LocalConsistencyDiffusion:
    """The forward marginals, training loss and samplers for k local-consistency segments."""

    schedule: Schedule
    segments: int = 3
    parameterization: str = "x0"
    weighting: str = "mean"
    clip: Optional[float] = None  # clip x0_hat to [-clip, clip] while sampling; None: never

    def __post_init__(self) -> None:
        if self.parameterization not in PARAMETERIZATIONS or self.weighting not in WEIGHTINGS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS} and weighting one of {WEIGHTINGS}")
        if not 1 <= self.segments <= self.schedule.steps:
            raise ValueError(f"segments must be in [1, T={self.schedule.steps}], got {self.segments}")

    @property
    def steps(self) -> int:
        return self.schedule.steps

    @property
    def ends(self) -> torch.Tensor:
        return segment_ends(self.steps, self.segments)

    @property
    def starts_from_theta0(self) -> bool:
        return False  # the chain starts from Gaussian noise

    def checkpoint_indices(self, checkpoint_steps: Sequence[int]) -> List[int]:
        """Checkpoints used as targets: the k segment targets."""
        return target_indices(checkpoint_steps, self.segments)

    # -- per-step coefficients, gathered at integer steps and broadcast over (N, D) ----------

    def _at(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values.to(like.device)[t].to(like.dtype).unsqueeze(-1)

    def local_abar(self, t: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
        """abar^(i)_t = abar_t / abar_{e_i}, float64 ``(N,)``."""
        abar = self.schedule.abar.to(t.device)
        return abar[t] / abar[end]

    def _posterior_coefs(self, abar_t: torch.Tensor, abar_prev: torch.Tensor, alpha_t: torch.Tensor):
        """Posterior mean a x0 + b x_t and variance of q(x_{t-1} | x_t, x0) for cumulative products."""
        beta_t = 1.0 - alpha_t
        a = abar_prev.sqrt() * beta_t / (1.0 - abar_t)
        b = alpha_t.sqrt() * (1.0 - abar_prev) / (1.0 - abar_t)
        var = beta_t * (1.0 - abar_prev) / (1.0 - abar_t)
        return a, b, var

    def global_coefs(self, t: torch.Tensor):
        s = self.schedule
        return self._posterior_coefs(s.abar.to(t.device)[t], s.abar.to(t.device)[t - 1], s.alpha.to(t.device)[t])

    def q_sample(self, target: torch.Tensor, t: torch.Tensor, end: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Segment marginal: ``target (N, D)`` reached at ``end``, noised to step ``t`` (N,)."""
        abar_l = self.local_abar(t, end).to(target.dtype).unsqueeze(-1)
        return abar_l.sqrt() * target + (1.0 - abar_l).sqrt() * noise

    def predict(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Network output -> ``(x0_hat, eps_hat)`` under the global schedule."""
        abar = self._at(self.schedule.abar, t, x_t)
        if self.parameterization == "eps":
            return (x_t - (1 - abar).sqrt() * out) / abar.sqrt(), out
        if self.parameterization == "x0":
            return out, (x_t - abar.sqrt() * out) / (1 - abar).sqrt()
        x0 = abar.sqrt() * x_t - (1 - abar).sqrt() * out  # v-prediction
        return x0, (1 - abar).sqrt() * x_t + abar.sqrt() * out

    def model_mean(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The global DDPM posterior mean implied by the network output."""
        x0, _ = self.predict(out, x_t, t)
        a, b, _ = self.global_coefs(t)
        return a.to(x_t.dtype).unsqueeze(-1) * x0 + b.to(x_t.dtype).unsqueeze(-1) * x_t

    def segment_mean(self, target: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
        """Segment i's posterior mean a^(i)_t target_i + b^(i)_t x_t."""
        abar = self.schedule.abar.to(t.device)
        a, b, _ = self._posterior_coefs(abar[t] / abar[end], abar[t - 1] / abar[end], self.schedule.alpha.to(t.device)[t])
        return a.to(x_t.dtype).unsqueeze(-1) * target + b.to(x_t.dtype).unsqueeze(-1) * x_t

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """1 / (per-t divisor): eps divides by beta^2 / (alpha (1 - abar)); x0 by a_t^2 (an x0-space
        error, uniform over t); mean: 1."""
        if self.weighting == "mean":
            return torch.ones_like(t, dtype=torch.float64)
        if self.weighting == "x0":
            return 1.0 / self.global_coefs(t)[0] ** 2
        s = self.schedule
        beta, alpha, abar = s.beta.to(t.device)[t], s.alpha.to(t.device)[t], s.abar.to(t.device)[t]
        return alpha * (1 - abar) / beta**2

    def draw(self, bsz: int, dim: int, generator: Optional[torch.Generator] = None,
             device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32) -> Dict[str, torch.Tensor]:
        """The randomness of one loss evaluation: per (task, segment) a step t ~ U{e_i + 1..T} and noise."""
        ends = self.ends.to(device).repeat(bsz)  # (B*k,)
        u = torch.rand(bsz * self.segments, generator=generator, device=device, dtype=torch.float64)
        t = ends + 1 + torch.floor(u * (self.steps - ends)).long()
        noise = torch.randn(bsz * self.segments, dim, generator=generator, device=device, dtype=dtype)
        return {"t": t, "ends": ends, "noise": noise}

    def subset(self, draw: Dict[str, torch.Tensor], rows: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The part of ``draw`` that belongs to target rows ``rows`` (sorted; see FromTheta0.subset)."""
        index = (rows.unsqueeze(1) * self.segments + torch.arange(self.segments, device=rows.device)).flatten()
        return {key: value[index] for key, value in draw.items()}

    def training_loss(self, model: Denoiser, targets: torch.Tensor, cond: torch.Tensor,
                      generator: Optional[torch.Generator] = None,
                      draw: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
        """Average of the k segment losses: targets ``(B, k, D)`` (normalised), cond ``(B, ...)``.

        The randomness comes from ``draw`` (see :meth:`draw`; lets callers vmap the loss) or is
        drawn here from ``generator``.
        """
        bsz, k, dim = targets.shape
        draw = draw if draw is not None else self.draw(bsz, dim, generator, targets.device, targets.dtype)
        t, ends, noise = draw["t"], draw["ends"], draw["noise"].to(targets.dtype)
        flat = targets.reshape(bsz * k, dim)
        x_t = self.q_sample(flat, t, ends, noise)
        out = model(x_t, t, cond.repeat_interleave(k, dim=0))
        err = (self.model_mean(out, x_t, t) - self.segment_mean(flat, x_t, t, ends)).square().mean(-1)
        return (err * self.loss_weight(t).to(err.dtype)).mean()

    @torch.no_grad()
    def sample(self, model: Denoiser, cond: torch.Tensor, dim: int, start: Optional[torch.Tensor] = None,
               sampler: str = "ddpm", sample_steps: Optional[int] = None, generator: Optional[torch.Generator] = None,
               return_chain: bool = False):
        """Run the global reverse chain from x_T ~ N(0, I): ``cond (N, ...)`` -> ``(N, D)``.

        ``start`` is unused (the bridge variant starts from theta_0; this one from noise).
        ``ddpm`` walks every step with the posterior variance; ``ddim`` is deterministic (eta = 0)
        over ``sample_steps`` evenly spaced steps. With ``return_chain`` also returns the list of
        ``(t, x_t)`` visited, x_T first.
        """
        n = cond.shape[0]
        x = torch.randn(n, dim, generator=generator, device=cond.device, dtype=torch.float32)
        chain = [(self.steps, x)]
        if sampler == "ddpm":
            for step in range(self.steps, 0, -1):
                t = torch.full((n,), step, device=cond.device, dtype=torch.long)
                x0, _ = self.predict(model(x, t, cond), x, t)
                x0 = x0.clamp(-self.clip, self.clip) if self.clip else x0
                a, b, var = self.global_coefs(t)
                x = a.float().unsqueeze(-1) * x0 + b.float().unsqueeze(-1) * x
                if step > 1:
                    x = x + var.float().sqrt().unsqueeze(-1) * torch.randn(x.shape, generator=generator,
                                                                          device=x.device, dtype=x.dtype)
                chain.append((step - 1, x))
        elif sampler == "ddim":
            count = sample_steps or self.steps
            grid = torch.linspace(self.steps, 0, count + 1).round().long().tolist()
            abar = self.schedule.abar
            for cur, nxt in zip(grid[:-1], grid[1:]):
                t = torch.full((n,), cur, device=cond.device, dtype=torch.long)
                x0, eps = self.predict(model(x, t, cond), x, t)
                if self.clip:
                    x0 = x0.clamp(-self.clip, self.clip)
                    eps = (x - abar[cur].sqrt().float() * x0) / (1 - abar[cur]).sqrt().float()
                x = abar[nxt].sqrt().float() * x0 + (1 - abar[nxt]).sqrt().float() * eps
                chain.append((nxt, x))
        else:
            raise ValueError(f"sampler must be ddpm or ddim, got {sampler!r}")
        return (x, chain) if return_chain else x
