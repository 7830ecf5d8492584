"""Gradient-based meta-learning baselines on a flat weight vector: MAML, first-order MAML, Reptile.

Each method learns one initialisation theta ``(D,)`` of the base network from which a few plain
SGD steps fit a new task. The task loss is a functional ``loss(theta (D,), x, y) -> scalar``
(:func:`ltdi_ray.trajectories.inner.make_functional`); tasks of a meta-batch are batched with
``vmap`` and the outer update is ``torch.optim.Adam`` on theta. :func:`adapt` fine-tunes any
initialisation on support sets with the batched inner loop, so baselines and the shared theta_0
are scored the same way. No global seeds are set: the caller's ``sample_batch`` owns the data.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from typing import Callable, List, Tuple

import numpy as np
import torch
from torch.func import vmap

from ltdi_ray.tasks.episodes import draw_picks, pick_points
from ltdi_ray.trajectories.inner import LossFn, run_batched

METHODS = ("maml", "fomaml", "reptile")
Batch = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # sx (B,K,...), sy, qx (B,Q,...), qy


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
    from ltdi_ray.config.schema import TrajectoryConfig

    start = theta.detach().expand(sx.shape[0], -1) if theta.dim() == 1 else theta.detach()
    if steps == 0:
        return start.clone()
    run = TrajectoryConfig(optimizer=optimizer, lr=lr, steps=steps, save_every=steps)
    return run_batched(loss, start, sx, sy, run)[:, -1]


def _query_grads(loss: LossFn, adapted: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-task query gradients ``(B, D)`` at ``adapted`` ``(B, D)`` and the mean query loss."""
    with torch.enable_grad():
        adapted = adapted.detach().requires_grad_(True)
        losses = vmap(loss)(adapted, qx, qy)
        (g,) = torch.autograd.grad(losses.sum(), adapted)
    return g, losses.detach().mean()


def meta_gradient(loss: LossFn, theta: torch.Tensor, batch: Batch, method: str, settings) -> Tuple[torch.Tensor, torch.Tensor]:
    """The outer gradient ``(D,)`` at theta ``(D,)`` for one meta-batch, and the mean query loss (scalar);
    ``settings``: a ``MetaInitConfig`` (its ``inner_steps`` and ``inner_lr``).

    * maml: d/dtheta of mean_i L_q_i(theta - a grad L_s_i(...)) through all inner steps (second order).
    * fomaml: mean_i grad L_q_i at the adapted weights (inner gradients held constant).
    * reptile: theta - mean_i(theta_i), theta_i after ``inner_steps`` SGD steps on the task's
      support and query points together; this is not a gradient of any loss but is fed to Adam
      as one (the Adam variant of Nichol et al., 2018). The loss reported is the query loss at theta_i.
    """
    sx, sy, qx, qy = batch
    theta = theta.detach()
    if method == "maml":
        return _maml_gradient(loss, theta, batch, settings.inner_steps, settings.inner_lr)
    if method == "fomaml":
        adapted = adapt(loss, theta, sx, sy, settings.inner_steps, settings.inner_lr)
        g, value = _query_grads(loss, adapted, qx, qy)
        return g.mean(0), value
    x, y = torch.cat([sx, qx], dim=1), torch.cat([sy, qy], dim=1)
    adapted = adapt(loss, theta, x, y, settings.inner_steps, settings.inner_lr)
    with torch.no_grad():
        value = vmap(loss)(adapted, qx, qy).mean()
    return theta - adapted.mean(0), value


def train_meta_init(loss: LossFn, theta0: torch.Tensor, sample_batch: Callable[[int], Batch], method: str,
                    settings, on_step: Callable[[], None] = lambda: None) -> Tuple[torch.Tensor, List[float]]:
    """Meta-train an initialisation by ``method`` from ``theta0`` ``(D,)`` for ``settings.meta_steps`` outer
    steps (``settings``: a ``MetaInitConfig``; ``on_step`` is called after each, e.g. a progress bar).

    ``sample_batch(step)`` returns ``(sx, sy, qx, qy)`` shaped ``(B, K, ...)`` and ``(B, Q, ...)``.
    Returns the learned theta ``(D,)`` and the mean query loss of every step (floats; for Reptile the
    query loss after adapting on support + query). Deterministic given the same ``sample_batch``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    theta = theta0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=settings.outer_lr)
    history: List[float] = []
    for step in range(settings.meta_steps):
        g, value = meta_gradient(loss, theta, sample_batch(step), method, settings)
        theta.grad = g.detach()
        opt.step()
        history.append(float(value))
        on_step()
    return theta.detach().clone(), history


def meta_train_on_pools(loss: LossFn, theta0: torch.Tensor, pools: Tuple[torch.Tensor, torch.Tensor], classes: int,
                        shots: int, method: str, settings, on_step: Callable[[], None] = lambda: None,
                        pool_query: bool = False) -> Tuple[torch.Tensor, dict]:
    """:func:`train_meta_init` on training pools ``(N, P, ...)``: each outer step draws ``settings.meta_batch``
    tasks, ``shots`` support and some query points per class (``classes`` per pool; ``pool_query``: every
    other pool point; Reptile's inner loop runs ``settings.reptile_inner_steps`` where the settings have
    them). Returns (theta ``(D,)``, its settings with the first / last outer loss)."""
    px, py = pools
    queries = 10 if classes == 1 else min(5, px.shape[1] // classes - shots)  # per class
    if pool_query:
        queries = px.shape[1] // classes - shots
    if method == "reptile" and hasattr(settings, "reptile_inner_steps"):
        settings = replace(settings, inner_steps=settings.reptile_inner_steps)

    def sample_batch(step: int):
        rng = np.random.default_rng([settings.seed, step, 7])
        idx = torch.as_tensor(rng.integers(0, len(px), size=settings.meta_batch))
        pick = torch.as_tensor(draw_picks(rng, settings.meta_batch, px.shape[1], shots + queries, classes))
        s, q = pick[:, :, :shots].flatten(1), pick[:, :, shots:].flatten(1)
        return pick_points(px, idx, s), pick_points(py, idx, s), pick_points(px, idx, q), pick_points(py, idx, q)

    tic = time.perf_counter()
    theta, history = train_meta_init(loss, theta0, sample_batch, method, settings, on_step)
    record = {"method": method, **{k: v for k, v in asdict(settings).items() if k not in ("cpus", "reptile_inner_steps", "reuse")},
              "train_tasks": len(px), "support": shots * classes, "outer_query": queries * classes,
              "meta_train_s": round(time.perf_counter() - tic, 1),
              "outer_loss_first_last": [round(history[0], 4), round(float(np.mean(history[-50:])), 4)]}
    return theta, record
