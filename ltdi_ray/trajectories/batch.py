"""Collect the optimisation trajectories of a batch of tasks (plain torch; Ray wraps it)."""

from __future__ import annotations

from typing import Dict, Iterator, Optional, Sequence

import numpy as np
import torch

from ltdi_ray.base_nets.paramspec import ParamSpec
from ltdi_ray.errors import DataError
from ltdi_ray.tasks.base import TaskFamily, task_seed
from ltdi_ray.tasks.episodes import pick_points
from ltdi_ray.trajectories.inner import evaluate, make_functional, run_batched
from ltdi_ray.trajectories.theta0 import Theta0


def available_bytes(device: torch.device) -> Optional[int]:
    """Memory this process could still take on ``device`` (free GPU memory; Linux's MemAvailable), or None."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            line = next(ln for ln in f if ln.startswith("MemAvailable:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration):
        return None


class TrajectoryBatcher:
    """Turns task ids of ``split`` into rows: episode arrays, checkpoints ``(C, D)`` and per-checkpoint
    losses; ``opt`` is the ``trajectory`` config node, ``theta0`` where every trajectory starts.

    Tasks run in chunks whose inner loop fits ``chunk_mb`` (and half the memory still available), so the
    peak does not grow with the number of ids of a call; a chunk's rows are the same as a whole call's."""

    def __init__(self, family: TaskFamily, opt, split: str, base_seed: int, theta0: Theta0, device: str = "cpu",
                 chunk_mb: int = 1024):
        self.family, self.opt, self.split, self.base_seed = family, opt, split, base_seed
        self.chunk_mb, self._chunk_tasks = chunk_mb, 0
        self.device = torch.device(device)
        self.theta0 = theta0.to(self.device)
        self.net = family.build_net().to(self.device)
        self.spec = ParamSpec.from_module(self.net)
        self.loss = make_functional(self.net, self.spec, family.loss)
        self.metric = make_functional(self.net, self.spec, family.metric)

    def __call__(self, task_ids: Sequence[int]) -> Dict[str, np.ndarray]:
        """Rows for ``task_ids`` as arrays with a leading batch axis ``B``."""
        parts = list(self.chunks(task_ids))
        return parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def chunks(self, task_ids: Sequence[int]) -> Iterator[Dict[str, np.ndarray]]:
        """The rows of ``task_ids``, in order, in chunks of at most :meth:`chunk_tasks` tasks."""
        ids = np.asarray(task_ids, dtype=np.int64)
        size = self.chunk_tasks(int(ids[0])) if len(ids) else 1
        for lo in range(0, len(ids) or 1, size):  # no ids: one empty chunk, the rows' layout with B = 0
            yield self._rows(ids[lo:lo + size])

    def task_bytes(self, task_id: int) -> int:
        """Working memory of one task's inner loop, in bytes: the tensors its loss keeps for the backward
        pass (measured on its pool), twice (the forward's and the gradient's), plus its weights, Adam's
        state and the checkpoints (``(C + 6) x D`` floats)."""
        ep = self.family.sample_many(self.split, [task_id], self.base_seed)
        x = self.family.to_torch(ep["pool_x"]).to(self.device)[0]
        y = self.family.targets_to_torch(ep["pool_y"]).to(self.device)[0]
        saved = 0

        def count(t: torch.Tensor) -> torch.Tensor:
            nonlocal saved
            saved += t.numel() * t.element_size()
            return t

        theta = self.theta0.shared.detach().clone().requires_grad_(True)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
            self.loss(theta, x, y)
        return 2 * saved + 4 * theta.numel() * (len(self.opt.checkpoint_steps) + 6)

    def chunk_tasks(self, task_id: int = 0) -> int:
        """Tasks per chunk (measured once, on ``task_id``): ``collect.chunk_mb`` or half the memory still
        available on the device, whichever is less, over :meth:`task_bytes`."""
        if not self._chunk_tasks:
            budget = self.chunk_mb * 2**20
            free = available_bytes(self.device)
            if free is not None:
                budget = min(budget, free // 2)
            self._chunk_tasks = max(1, budget // self.task_bytes(task_id))
        return self._chunk_tasks

    def _rows(self, ids: np.ndarray) -> Dict[str, np.ndarray]:
        episodes = self.family.sample_many(self.split, ids, self.base_seed)
        to_x = lambda a: self.family.to_torch(a).to(self.device)  # noqa: E731
        to_y = lambda a: self.family.targets_to_torch(a).to(self.device)  # noqa: E731
        px, py, qx, qy = to_x(episodes["pool_x"]), to_y(episodes["pool_y"]), to_x(episodes["query_x"]), to_y(episodes["query_y"])
        idx = torch.as_tensor(episodes["support_idx"], dtype=torch.long, device=self.device)
        every = torch.arange(len(ids), device=self.device)
        start = self.theta0.for_tasks(self.family, ids, self.split, self.base_seed,
                                      pick_points(px, every, idx), pick_points(py, every, idx))
        checkpoints = run_batched(self.loss, start, px, py, self.opt)
        pool_loss = evaluate(self.loss, checkpoints, px, py)
        query_loss = evaluate(self.loss, checkpoints, qx, qy)
        same = self.family.metric == self.family.loss  # regression: the metric is the loss, computed once
        query_metric = query_loss if same else evaluate(self.metric, checkpoints, qx, qy)
        bad = ~(torch.isfinite(checkpoints).flatten(1).all(1) & torch.isfinite(pool_loss).all(1))
        if bad.any():
            first = ids[bad.cpu().numpy()][:5].tolist()
            raise DataError(f"the inner loop diverged (non-finite weights) for tasks {first}; "
                            f"lower trajectory.lr (now {self.opt.lr})")
        n = len(ids)
        return {
            "task_id": ids,
            "seed": np.array([task_seed(self.family.name, self.split, int(i), self.base_seed) for i in ids], np.int64),
            **episodes,
            "steps": np.tile(np.asarray(self.opt.checkpoint_steps, np.int32), (n, 1)),
            "checkpoints": checkpoints.cpu().numpy().astype(np.float32, copy=False),
            "pool_loss": pool_loss.cpu().numpy().astype(np.float32, copy=False),
            "query_loss": query_loss.cpu().numpy().astype(np.float32, copy=False),
            "query_metric": query_metric.cpu().numpy().astype(np.float32, copy=False),
        }
