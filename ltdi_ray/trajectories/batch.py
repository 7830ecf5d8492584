"""Collect the optimisation trajectories of a batch of tasks (plain torch; Ray wraps it)."""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch

from ltdi_ray.base_nets.paramspec import ParamSpec
from ltdi_ray.errors import DataError
from ltdi_ray.tasks.base import TaskFamily, task_seed
from ltdi_ray.tasks.episodes import pick_points
from ltdi_ray.trajectories.inner import evaluate, make_functional, run_batched
from ltdi_ray.trajectories.theta0 import Theta0


class TrajectoryBatcher:
    """Turns task ids of ``split`` into rows: episode arrays, checkpoints ``(C, D)`` and per-checkpoint
    losses; ``opt`` is the ``trajectory`` config node, ``theta0`` where every trajectory starts."""

    def __init__(self, family: TaskFamily, opt, split: str, base_seed: int, theta0: Theta0, device: str = "cpu"):
        self.family, self.opt, self.split, self.base_seed = family, opt, split, base_seed
        self.device = torch.device(device)
        self.theta0 = theta0.to(self.device)
        self.net = family.build_net().to(self.device)
        self.spec = ParamSpec.from_module(self.net)
        self.loss = make_functional(self.net, self.spec, family.loss)
        self.metric = make_functional(self.net, self.spec, family.metric)

    def __call__(self, task_ids: Sequence[int]) -> Dict[str, np.ndarray]:
        """Rows for ``task_ids`` as arrays with a leading batch axis ``B``."""
        ids = np.asarray(task_ids, dtype=np.int64)
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
