"""Meta-training of the generator (DESIGN 2.5): first-order Reptile, and single-level training.

A generator is a task encoder plus a denoiser; ``task_loss`` conditions the diffusion loss on
the encoded support set. Reptile adapts a copy of the weights to each task of a meta-batch with
a few SGD steps and moves the shared weights towards the adapted ones through the outer
optimiser; ``single_level_step`` minimises the same loss directly over a minibatch of tasks.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from ltdi_ray.diffusion import TrajectoryDiffusion


class Generator(nn.Module):
    """Task encoder + denoiser; ``cond(support_x, support_y) -> (B, cond_dim)``."""

    def __init__(self, encoder: nn.Module, denoiser: nn.Module):
        super().__init__()
        self.encoder, self.denoiser = encoder, denoiser

    def cond(self, support_x: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
        return self.encoder(support_x, support_y)


def task_loss(gen: Generator, diffusion: TrajectoryDiffusion, targets: torch.Tensor, support_x: torch.Tensor,
              support_y: torch.Tensor, draws: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The diffusion loss of B tasks: targets ``(B, k, D)`` normalised, supports ``(B, K, ...)``.

    Each task's targets are noised ``draws`` times (fresh t and eps per draw and segment).
    """
    c = gen.cond(support_x, support_y).repeat_interleave(draws, dim=0)
    return diffusion.training_loss(gen.denoiser, targets.repeat_interleave(draws, dim=0), c, generator)


def single_level_step(gen: Generator, diffusion: TrajectoryDiffusion, opt: torch.optim.Optimizer, targets, support_x,
                      support_y, draws: int = 1) -> float:
    """One minibatch step of the ablation baseline (``train.meta=none``); returns the loss."""
    opt.zero_grad(set_to_none=True)
    loss = task_loss(gen, diffusion, targets, support_x, support_y, draws)
    loss.backward()
    opt.step()
    return float(loss.detach())


def reptile_meta_gradient(gen: Generator, diffusion: TrajectoryDiffusion, targets, support_x, support_y,
                          inner_steps: int = 3, inner_lr: float = 0.005, draws: int = 1) -> tuple:
    """Sum over the B tasks of (phi - phi_i) after ``inner_steps`` SGD steps on each task.

    Returns ``(summed deltas per parameter, mean inner loss)``; ``gen`` is left at phi. Summing
    (not averaging) lets data-parallel workers all-reduce the sums and divide by the global B.
    """
    params: List[nn.Parameter] = [p for p in gen.parameters() if p.requires_grad]
    phi = [p.detach().clone() for p in params]
    deltas = [torch.zeros_like(p) for p in params]
    losses = []
    for b in range(targets.shape[0]):
        for _ in range(inner_steps):
            loss = task_loss(gen, diffusion, targets[b:b + 1], support_x[b:b + 1], support_y[b:b + 1], draws)
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p.sub_(inner_lr * g)
            losses.append(float(loss.detach()))
        with torch.no_grad():
            for p, p0, d in zip(params, phi, deltas):
                d.add_(p0 - p)
                p.copy_(p0)
    return deltas, sum(losses) / len(losses)


def apply_meta_gradient(gen: Generator, opt: torch.optim.Optimizer, deltas: List[torch.Tensor], count: int) -> None:
    """Outer step on g = phi - mean_i(phi_i) (= summed deltas / count) through ``opt``."""
    params = [p for p in gen.parameters() if p.requires_grad]
    opt.zero_grad(set_to_none=True)
    for p, d in zip(params, deltas):
        p.grad = d / count
    opt.step()
