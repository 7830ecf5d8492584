"""The inner-loop optimiser, batched over many tasks, and its per-task reference.

A task's network is the base module evaluated functionally on a flat weight vector theta (D,).
:func:`run_batched` trains B tasks at once with ``vmap(grad(...))`` and hand-batched Adam/SGD
(optionally SAM) on a ``(B, D)`` tensor; :func:`run_per_task` is the plain loop with
``torch.optim`` that exists to check it (both agree to 1e-5 on the same inputs). Both take the
``trajectory`` config node (``TrajectoryConfig``: optimizer, lr, steps, save_every, sam_rho).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch.func import functional_call, vmap

from ltdi_ray.base_nets.paramspec import ParamSpec

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (theta (D,), x, y) -> scalar


ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults


def make_functional(net: torch.nn.Module, spec: ParamSpec, fn: Callable) -> LossFn:
    """``fn(predictions, targets)`` (a family's loss or metric) of ``net`` at flat weights ``theta``."""

    def at(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return fn(functional_call(net, spec.unflatten(theta), (x,)), y)

    return at


def evaluate(fn: LossFn, thetas: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``fn`` at every checkpoint: thetas ``(B, C, D)``, data ``(B, N, ...)`` -> ``(B, C)``. One checkpoint
    at a time: vmapped over C as well, a conv net's activations took C times the memory of a training step."""
    batched = vmap(fn)
    with torch.no_grad():
        return torch.stack([batched(thetas[:, c], x, y) for c in range(thetas.shape[1])], dim=1)


def _batched_grad(loss: LossFn) -> Callable[..., torch.Tensor]:
    """Per-task gradients ``(B, D)``. Tasks are independent, so the gradient of the summed
    losses w.r.t. the stacked thetas is every task's own gradient; one batched backward pass
    measured 4x faster than ``vmap(grad(loss))`` on CPU.
    """
    batched_loss = vmap(loss)

    def grad_fn(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            theta = theta.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(batched_loss(theta, x, y).sum(), theta)
        return g

    return grad_fn


def run_batched(loss: LossFn, theta0: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                opt) -> torch.Tensor:
    """Train B tasks at once from ``theta0`` ``(B, D)`` on pools ``x, y`` ``(B, P, ...)``.

    Returns the checkpoints ``(B, C, D)``: theta_0, theta_save_every, ..., theta_M.
    """
    grad_fn = _batched_grad(loss)
    theta = theta0.detach().clone()
    m, v = torch.zeros_like(theta), torch.zeros_like(theta)
    b1, b2 = ADAM_BETAS
    saved = [theta.clone()]
    for step in range(1, opt.steps + 1):
        g = grad_fn(theta, x, y)
        if opt.sam_rho > 0:
            scale = opt.sam_rho / (g.norm(dim=1, keepdim=True) + 1e-12)
            g = grad_fn(theta + scale * g, x, y)
        if opt.optimizer == "sgd":
            theta = theta - opt.lr * g
        else:  # the same arithmetic as torch.optim.Adam (single-tensor path)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / math.sqrt(1 - b2**step)).add_(ADAM_EPS)
            theta = theta.addcdiv(m, denom, value=-opt.lr / (1 - b1**step))
        if step % opt.save_every == 0:
            saved.append(theta.clone())
    return torch.stack(saved, dim=1)


def run_per_task(loss: LossFn, theta0: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                 opt) -> torch.Tensor:
    """Reference: one task with ``torch.optim``; theta0 ``(D,)``, data ``(P, ...)`` -> ``(C, D)``."""
    theta = theta0.detach().clone().requires_grad_(True)
    if opt.optimizer == "sgd":
        optim = torch.optim.SGD([theta], lr=opt.lr)
    else:
        optim = torch.optim.Adam([theta], lr=opt.lr, betas=ADAM_BETAS, eps=ADAM_EPS, foreach=False)
    saved = [theta.detach().clone()]
    for step in range(1, opt.steps + 1):
        optim.zero_grad()
        (g,) = torch.autograd.grad(loss(theta, x, y), theta)
        if opt.sam_rho > 0:
            perturbed = (theta + opt.sam_rho * g / (g.norm() + 1e-12)).detach().requires_grad_(True)
            (g,) = torch.autograd.grad(loss(perturbed, x, y), perturbed)
        theta.grad = g
        optim.step()
        if step % opt.save_every == 0:
            saved.append(theta.detach().clone())
    return torch.stack(saved)
