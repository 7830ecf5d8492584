"""The outer loop over a task store held in memory, data-parallel ready (plain torch).

The global meta-batch of step s is drawn from ``(seed, s)`` over all N training tasks. Worker r
of W holds only its shard, the contiguous task range ``[r N / W, (r + 1) N / W)``, and computes
the slots of the global batch whose task it owns. Every random number a task's loss uses comes
from ``(seed, s)`` and the task's slot, never from the worker, and the workers' gradient sums
are combined with the injected ``allreduce``: W workers reproduce one worker's update up to
float summation order.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

from ltdi_ray.diffusion import Diffusion
from ltdi_ray.generator.network import GeneratorNet
from ltdi_ray.meta.reptile import apply_meta_gradient, reptile_meta_gradient
from ltdi_ray.meta.task_loss import task_loss
from ltdi_ray.tasks.episodes import draw_picks, pick_points

AllReduce = Callable[[List[torch.Tensor]], None]  # in-place sum over workers
META_RULES = ("none", "reptile")  # single level (this project's default) | the paper's bi-level Reptile
LR_SCHEDULES = ("cosine", "constant")  # the outer learning rate over all steps


def shard_range(total: int, rank: int, world: int) -> Tuple[int, int]:
    """Worker ``rank``'s contiguous task range ``[lo, hi)`` of ``total`` tasks."""
    return total * rank // world, total * (rank + 1) // world


def _seed(*key: int) -> int:
    return int(np.random.SeedSequence(list(key)).generate_state(1)[0])


@dataclass
class TaskStore:
    """One shard of the training tasks: normalised targets ``(n, k + 1, D)``, pools ``(n, P, ...)``,
    stored supports ``(n, K)``; row i is task ``first + i`` of ``total`` (default: all of them).
    Classification pools are ``classes`` class-major blocks, and supports take K / classes from each."""

    targets: torch.Tensor
    pool_x: torch.Tensor
    pool_y: torch.Tensor
    support_idx: torch.Tensor
    first: int = 0
    total: Optional[int] = None
    classes: int = 1

    def __post_init__(self) -> None:
        self.total = len(self) if self.total is None else self.total

    @classmethod
    def from_rows(cls, rows: dict, family, norm, device, first: int = 0, total: Optional[int] = None) -> "TaskStore":
        """A store on ``device`` from dataset rows in task order: ``targets`` (the target checkpoints
        ``(n, k + 1, D)``, raw weights), ``pool_x``, ``pool_y``, ``support_idx``; ``family`` makes the
        network inputs and targets, ``norm`` normalises the weights."""
        return cls(norm.normalize(torch.as_tensor(rows["targets"]).float().to(device)),
                   family.to_torch(rows["pool_x"]).to(device), family.targets_to_torch(rows["pool_y"]).to(device),
                   torch.from_numpy(rows["support_idx"].astype(np.int64)).to(device), first=first, total=total,
                   classes=family.pool_classes)

    def __len__(self) -> int:
        return self.targets.shape[0]

    def holds(self, idx: np.ndarray) -> np.ndarray:
        """Which task positions ``idx (B,)`` are rows of this shard."""
        return (idx >= self.first) & (idx < self.first + len(self))


class MetaTrainer:
    """Reptile (``meta="reptile"``) or single-level (``"none"``) outer steps on a :class:`TaskStore`.

    Seconds of computation and of all-reduce accumulate until :meth:`take_timing` (the scaling
    figures each epoch reports).
    """

    def __init__(self, gen: GeneratorNet, diffusion: Diffusion, store: TaskStore, train_cfg, rank: int = 0,
                 world: int = 1, allreduce: Optional[AllReduce] = None, total_steps: Optional[int] = None,
                 function_loss: Optional[Callable] = None, chain_loss: Optional[Callable] = None):
        self.gen, self.diffusion, self.store, self.cfg = gen, diffusion, store, train_cfg
        self.function_loss = function_loss  # (pred, end, pool inputs) -> a term added to single-level losses
        self.chain_loss = chain_loss  # (gen, diffusion, support x, y, pool x, y) -> another one
        self.rank, self.world, self.allreduce = rank, world, allreduce
        self.total_steps = total_steps or train_cfg.epochs * train_cfg.steps_per_epoch
        self.params = [p for p in gen.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(self.params, lr=train_cfg.lr)
        self.device = store.targets.device
        self._timing = {"compute_s": 0.0, "allreduce_s": 0.0, "steps": 0}

    def lr_at(self, step: int) -> float:
        """The outer learning rate of ``step``: a function of the step alone, so a resumed or
        data-parallel run follows the same schedule."""
        if self.cfg.lr_schedule == "constant":
            return self.cfg.lr
        return 0.5 * self.cfg.lr * (1 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))

    def batch(self, step: int):
        """The global meta-batch of ``step``: task positions ``(B,)`` in ``[0, total)`` and support
        picks ``(B, K)``; independent of the worker."""
        rng = np.random.default_rng([self.cfg.seed, step])
        b, store = self.cfg.meta_batch, self.store
        idx = rng.integers(0, store.total, size=b)
        pool, shots = store.pool_x.shape[1], store.support_idx.shape[1]
        picks = draw_picks(rng, b, pool, shots // store.classes, store.classes).reshape(b, shots)
        if not self.cfg.resample_support:  # the stored supports of this worker's tasks
            mine = store.holds(idx)
            picks[mine] = store.support_idx[torch.as_tensor(idx[mine] - store.first)].cpu().numpy()
        return idx, picks

    def _slice(self, step: int):
        idx, picks = self.batch(step)
        slots = np.flatnonzero(self.store.holds(idx))
        ti = torch.as_tensor(idx[slots] - self.store.first, device=self.device)
        pk = torch.as_tensor(picks[slots], device=self.device, dtype=torch.long)
        return (slots, ti, self.store.targets[ti], pick_points(self.store.pool_x, ti, pk),
                pick_points(self.store.pool_y, ti, pk))

    def _single_level(self, step: int, slots: np.ndarray, ti, targets, sx, sy) -> Tuple[List[torch.Tensor], float]:
        """Gradient of the summed loss of this worker's slots (tasks ``ti``); the noise is drawn for
        the global batch from ``(seed, step)`` and cut to the slots' rows."""
        c, dim = self.cfg, targets.shape[-1]
        rng = torch.Generator(device=self.device)
        rng.manual_seed(_seed(c.seed, step))
        draw = self.diffusion.draw(c.meta_batch * c.draws, dim, rng, self.device, targets.dtype)
        if len(slots) < c.meta_batch:
            rows = (torch.as_tensor(slots, device=self.device).unsqueeze(1) * c.draws
                    + torch.arange(c.draws, device=self.device)).flatten()
            draw = self.diffusion.subset(draw, rows)
        extra = None
        if self.function_loss is not None:
            pool = self.store.pool_x[ti]
            extra = lambda pred, end, rows: self.function_loss(pred, end, pool, rows)  # noqa: E731
        total = task_loss(self.gen, self.diffusion, targets, sx, sy, c.draws, draw=draw, extra_loss=extra) * len(slots)
        if self.chain_loss is not None:
            chain = self.chain_loss(self.gen, self.diffusion, sx, sy, self.store.pool_x[ti], self.store.pool_y[ti])
            total = total + chain * len(slots)
        return list(torch.autograd.grad(total, self.params)), float(total.detach()) / len(slots)

    def _reptile(self, step: int, slots: np.ndarray, targets, sx, sy) -> Tuple[List[torch.Tensor], float]:
        """Summed Reptile deltas of this worker's slots, ``train.reptile_chunk`` tasks' weight copies at
        a time (default: 16 on a CPU, where larger chunks fall out of cache, 2.5x at 64 tasks; all at
        once on a GPU, 1.5x faster than 16)."""
        c, sums, losses = self.cfg, None, []
        chunk = c.reptile_chunk or (len(slots) if self.device.type == "cuda" else 16)
        for lo in range(0, len(slots), chunk):
            part = slice(lo, lo + chunk)
            gens = []
            for slot in slots[part]:
                g = torch.Generator(device=self.device)
                g.manual_seed(_seed(c.seed, step, int(slot)))
                gens.append(g)
            deltas, loss = reptile_meta_gradient(self.gen, self.diffusion, targets[part], sx[part], sy[part],
                                                 c.inner_steps, c.inner_lr, c.draws, gens)
            sums = deltas if sums is None else [a + b for a, b in zip(sums, deltas)]
            losses.append(loss * len(gens))
        return sums, sum(losses) / len(slots)

    def step(self, step: int) -> float:
        """One outer step; returns the mean loss of this worker's tasks (0.0 if it had none)."""
        c = self.cfg
        tic = time.perf_counter()
        slots, ti, targets, sx, sy = self._slice(step)
        if len(slots) == 0:  # this step drew no task of this shard: contribute zeros
            sums, loss = [torch.zeros_like(p) for p in self.params], 0.0
        elif c.meta == "reptile":
            sums, loss = self._reptile(step, slots, targets, sx, sy)
        else:
            sums, loss = self._single_level(step, slots, ti, targets, sx, sy)
        mid = time.perf_counter()
        if self.allreduce is not None:
            self.allreduce(sums)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        done = time.perf_counter()
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(step)
        apply_meta_gradient(self.gen, self.opt, sums, c.meta_batch)
        self._timing["compute_s"] += mid - tic + time.perf_counter() - done
        self._timing["allreduce_s"] += done - mid
        self._timing["steps"] += 1
        return loss

    def take_timing(self) -> dict:
        """Seconds per outer step (compute, all-reduce) since the last call, and reset."""
        t, steps = self._timing, max(1, self._timing["steps"])
        self._timing = {"compute_s": 0.0, "allreduce_s": 0.0, "steps": 0}
        return {"compute_s_per_step": round(t["compute_s"] / steps, 5),
                "allreduce_s_per_step": round(t["allreduce_s"] / steps, 5)}
