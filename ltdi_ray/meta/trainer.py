"""The outer loop over a task store held in memory, data-parallel ready (plain torch).

Every worker holds the same task store and draws the same global meta-batch for step s from
``(seed, s)``; worker r of W takes slots r, r + W, ... of it. Each task's noise comes from its
own generator seeded by ``(seed, step, slot)``, and the workers' sums are combined with the
injected ``allreduce``, so W workers reproduce one worker's Reptile update up to float
summation order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np
import torch

from ltdi_ray.diffusion import Diffusion
from ltdi_ray.meta.reptile import Generator, apply_meta_gradient, reptile_meta_gradient, task_loss

AllReduce = Callable[[List[torch.Tensor]], None]  # in-place sum over workers


def pick_points(data: torch.Tensor, tasks: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
    """Points ``picks (B, K)`` of tasks ``tasks (B,)`` from ``data (N, P, ...)`` -> ``(B, K, ...)``."""
    index = picks.view(picks.shape + (1,) * (data.dim() - 2)).expand(picks.shape + data.shape[2:])
    return torch.gather(data[tasks], 1, index)


@dataclass
class TaskStore:
    """Training tasks: normalised targets ``(N, n, D)``, pools ``(N, P, ...)``, stored support ``(N, K)``."""

    targets: torch.Tensor
    pool_x: torch.Tensor
    pool_y: torch.Tensor
    support_idx: torch.Tensor

    def __len__(self) -> int:
        return self.targets.shape[0]


class MetaTrainer:
    """Reptile (``meta="reptile"``) or single-level (``"none"``) outer steps on a :class:`TaskStore`."""

    def __init__(self, gen: Generator, diffusion: Diffusion, store: TaskStore, train_cfg, rank: int = 0,
                 world: int = 1, allreduce: Optional[AllReduce] = None):
        self.gen, self.diffusion, self.store, self.cfg = gen, diffusion, store, train_cfg
        self.rank, self.world, self.allreduce = rank, world, allreduce
        self.opt = torch.optim.Adam([p for p in gen.parameters() if p.requires_grad], lr=train_cfg.lr)
        self.device = store.targets.device

    def batch(self, step: int):
        """The global meta-batch of ``step``: task indices ``(B,)`` and support picks ``(B, K)``."""
        rng = np.random.default_rng([self.cfg.seed, step])
        n, b = len(self.store), self.cfg.meta_batch
        idx = rng.integers(0, n, size=b)
        if self.cfg.resample_support:
            pool, shots = self.store.pool_x.shape[1], self.store.support_idx.shape[1]
            picks = np.argsort(rng.random((b, pool)), axis=1)[:, :shots]
        else:
            picks = self.store.support_idx[torch.as_tensor(idx)].cpu().numpy()
        return idx, picks

    def _slice(self, step: int):
        idx, picks = self.batch(step)
        slots = np.arange(self.rank, len(idx), self.world)
        ti = torch.as_tensor(idx[slots], device=self.device)
        pk = torch.as_tensor(picks[slots], device=self.device, dtype=torch.long)
        return (slots, self.store.targets[ti], pick_points(self.store.pool_x, ti, pk),
                pick_points(self.store.pool_y, ti, pk))

    def _generators(self, step: int, slots: np.ndarray) -> List[torch.Generator]:
        out = []
        for slot in slots:
            g = torch.Generator(device=self.device)
            g.manual_seed(int(np.random.SeedSequence([self.cfg.seed, step, int(slot)]).generate_state(1)[0]))
            out.append(g)
        return out

    def step(self, step: int) -> float:
        """One outer step; returns this worker's mean loss."""
        c = self.cfg
        slots, targets, sx, sy = self._slice(step)
        gens = self._generators(step, slots)
        if c.meta == "reptile":
            sums, loss = reptile_meta_gradient(self.gen, self.diffusion, targets, sx, sy, c.inner_steps,
                                               c.inner_lr, c.draws, gens)
        else:  # single level: the gradient of this slice's summed loss (its noise depends on the slice)
            params = [p for p in self.gen.parameters() if p.requires_grad]
            total = task_loss(self.gen, self.diffusion, targets, sx, sy, c.draws, gens[0]) * len(slots)
            sums = list(torch.autograd.grad(total, params))
            loss = float(total.detach()) / max(1, len(slots))
        if self.allreduce is not None:
            self.allreduce(sums)
        apply_meta_gradient(self.gen, self.opt, sums, c.meta_batch)
        return loss
