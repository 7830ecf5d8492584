"""Gradient-based meta-learning baselines on a flat weight vector: MAML, first-order MAML, Reptile.

Each method learns one initialisation theta ``(D,)`` of the base network from which a few plain
SGD steps fit a new task. The task loss is a functional ``loss(theta (D,), x, y) -> scalar``
(:func:`ltdi_ray.trajectories.inner.make_loss`); tasks of a meta-batch are batched with
``vmap`` and the outer update is ``torch.optim.Adam`` on theta. :func:`adapt` fine-tunes any
initialisation on support sets with the batched inner loop, so baselines and the shared theta_0
are scored the same way. No global seeds are set: the caller's ``sample_batch`` owns the data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, List, Tuple

import torch
from torch.func import vmap

from ltdi_ray.trajectories.inner import InnerOptimizer, LossFn, run_batched

METHODS = ("maml", "fomaml", "reptile")
Batch = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # sx (B,K,...), sy, qx (B,Q,...), qy


@dataclass(frozen=True)
class MetaInitConfig:
    """Settings of one meta-initialisation run (plain-SGD inner loop, Adam outer loop)."""

    method: str = "maml"  # maml (second order) | fomaml (first order) | reptile
    meta_steps: int = 10000  # outer iterations
    meta_batch: int = 25  # tasks per outer step
    inner_steps: int = 5  # SGD steps per task (Reptile usually runs more)
    inner_lr: float = 0.01
    outer_lr: float = 1e-3
    seed: int = 0  # recorded for the caller's sampler; nothing here draws random numbers

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.meta_steps < 0 or self.meta_batch < 1 or self.inner_steps < 0:
            raise ValueError(f"need meta_steps >= 0, meta_batch >= 1, inner_steps >= 0; got {self}")

    def describe(self) -> dict:
        """The settings as a plain dict (for logs and result files)."""
        return asdict(self)


def _maml_gradient(loss: LossFn, theta: torch.Tensor, batch: Batch, steps: int, lr: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Second-order MAML gradient ``(D,)`` and mean query loss, differentiating through the inner SGD.

    The B tasks' weights are rows of ``theta.expand(B, D)``; the tasks are independent, so one
    backward pass of the summed losses (``create_graph=True``) gives every task's inner gradient,
    and the final backward pass sums the B paths back into theta. It equals
    ``torch.func.grad`` of ``vmap`` over tasks of the unrolled loop (tests check both) but
    measured 20x faster on CPU (10 ms against 210 ms for 25 sinusoid tasks, 5 steps).
    """
    sx, sy, qx, qy = batch
    batched_loss = vmap(loss)
    with torch.enable_grad():
        theta = theta.detach().requires_grad_(True)
        adapted = theta.expand(sx.shape[0], -1)
        for _ in range(steps):
            (g,) = torch.autograd.grad(batched_loss(adapted, sx, sy).sum(), adapted, create_graph=True)
            adapted = adapted - lr * g
        value = batched_loss(adapted, qx, qy).mean()
        (g,) = torch.autograd.grad(value, theta)
    return g, value.detach()


def adapt(loss: LossFn, theta: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor, steps: int, lr: float,
          optimizer: str = "sgd") -> torch.Tensor:
    """Fine-tune every task from ``theta`` (``(D,)`` shared or ``(B, D)``) on ``sx, sy`` ``(B, K, ...)``.

    Runs ``steps`` batched ``optimizer`` (sgd | adam) steps of size ``lr``; returns ``(B, D)``
    (the start itself, broadcast, when ``steps == 0``). No graph is kept.
    """
    start = theta.detach().expand(sx.shape[0], -1) if theta.dim() == 1 else theta.detach()
    if steps == 0:
        return start.clone()
    return run_batched(loss, start, sx, sy, InnerOptimizer(optimizer, lr, steps, save_every=steps))[:, -1]


def _query_grads(loss: LossFn, adapted: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-task query gradients ``(B, D)`` at ``adapted`` ``(B, D)`` and the mean query loss."""
    with torch.enable_grad():
        adapted = adapted.detach().requires_grad_(True)
        losses = vmap(loss)(adapted, qx, qy)
        (g,) = torch.autograd.grad(losses.sum(), adapted)
    return g, losses.detach().mean()


def meta_gradient(loss: LossFn, theta: torch.Tensor, batch: Batch, cfg: MetaInitConfig) -> Tuple[torch.Tensor, torch.Tensor]:
    """The outer gradient ``(D,)`` at theta ``(D,)`` for one meta-batch, and the mean query loss (scalar).

    * maml: d/dtheta of mean_i L_q_i(theta - a grad L_s_i(...)) through all inner steps (second order).
    * fomaml: mean_i grad L_q_i at the adapted weights (inner gradients held constant).
    * reptile: theta - mean_i(theta_i), theta_i after ``inner_steps`` SGD steps on the task's
      support and query points together; this is not a gradient of any loss but is fed to Adam
      as one (the Adam variant of Nichol et al., 2018). The loss reported is the query loss at theta_i.
    """
    sx, sy, qx, qy = batch
    theta = theta.detach()
    if cfg.method == "maml":
        return _maml_gradient(loss, theta, batch, cfg.inner_steps, cfg.inner_lr)
    if cfg.method == "fomaml":
        adapted = adapt(loss, theta, sx, sy, cfg.inner_steps, cfg.inner_lr)
        g, value = _query_grads(loss, adapted, qx, qy)
        return g.mean(0), value
    x, y = torch.cat([sx, qx], dim=1), torch.cat([sy, qy], dim=1)
    adapted = adapt(loss, theta, x, y, cfg.inner_steps, cfg.inner_lr)
    with torch.no_grad():
        value = vmap(loss)(adapted, qx, qy).mean()
    return theta - adapted.mean(0), value


def train_meta_init(loss: LossFn, theta0: torch.Tensor, sample_batch: Callable[[int], Batch],
                    cfg: MetaInitConfig) -> Tuple[torch.Tensor, List[float]]:
    """Meta-train an initialisation from ``theta0`` ``(D,)`` for ``cfg.meta_steps`` outer steps.

    ``sample_batch(step)`` returns ``(sx, sy, qx, qy)`` shaped ``(B, K, ...)`` and ``(B, Q, ...)``
    (B = ``cfg.meta_batch`` by convention; the sampler decides).
    Returns the learned theta ``(D,)`` and the mean query loss of every step (floats; for
    Reptile the query loss after adapting on support + query). Deterministic given the same
    ``sample_batch`` and ``cfg``.
    """
    theta = theta0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=cfg.outer_lr)
    history: List[float] = []
    for step in range(cfg.meta_steps):
        g, value = meta_gradient(loss, theta, sample_batch(step), cfg)
        theta.grad = g.detach()
        opt.step()
        history.append(float(value))
    return theta.detach().clone(), history
