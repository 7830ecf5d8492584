"""Collect the optimisation trajectories of a batch of tasks (plain torch; Ray wraps it)."""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch

from ltdi_ray.errors import DataError
from ltdi_ray.models.heads import prototype_head
from ltdi_ray.nets.paramspec import ParamSpec
from ltdi_ray.tasks.base import TaskFamily, task_seed
from ltdi_ray.trajectories.inner import InnerOptimizer, evaluate, make_loss, make_metric, run_batched


def pick_points(data: torch.Tensor, tasks: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
    """Points ``picks (B, K)`` of tasks ``tasks (B,)`` from ``data (N, P, ...)`` -> ``(B, K, ...)``."""
    index = picks.view(picks.shape + (1,) * (data.dim() - 2)).expand(picks.shape + data.shape[2:])
    return torch.gather(data[tasks], 1, index)


def initial_theta(family: TaskFamily, seed: int) -> torch.Tensor:
    """theta_0 ``(D,)``: the base network's own initialisation drawn under ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = family.build_net()
    return ParamSpec.from_module(net).flatten(dict(net.named_parameters())).detach()


SHARED_MODES = ("shared", "reptile")  # the theta0 modes whose tasks all start at one theta_0


class TrajectoryBatcher:
    """Turns task ids into rows: episode arrays, checkpoints ``(C, D)`` and per-checkpoint losses.

    theta_0 is shared by every task (``theta0="shared"``: one draw under ``init_seed``, or ``start``
    ``(D,)`` when given; ``"reptile"``: ``start``, a meta-learned one), drawn per task from the task's
    seed (``"per_task"``) or each task's ProtoNet head (``"prototype"``).
    """

    def __init__(self, family: TaskFamily, opt: InnerOptimizer, split: str, base_seed: int,
                 theta0: str = "shared", init_seed: int = 0, device: str = "cpu",
                 start: Optional[torch.Tensor] = None):
        self.family, self.opt, self.split, self.base_seed = family, opt, split, base_seed
        self.theta0_mode, self.device = theta0, torch.device(device)
        self.net = family.build_net().to(self.device)
        self.spec = ParamSpec.from_module(self.net)
        if theta0 == "reptile" and start is None:
            raise ValueError("theta0='reptile' needs its meta-learned start")
        self.shared_theta0 = (initial_theta(family, init_seed) if start is None else start).to(self.device)
        self.loss = make_loss(self.net, self.spec, family.loss)
        self.metric = make_metric(self.net, self.spec, family.loss)

    def theta0_for(self, task_ids: Sequence[int]) -> torch.Tensor:
        """``(B, D)`` starting points for ``task_ids``."""
        if self.theta0_mode in SHARED_MODES:
            return self.shared_theta0.expand(len(task_ids), -1)
        seeds = [task_seed(self.family.name, self.split, int(i), self.base_seed) for i in task_ids]
        return torch.stack([initial_theta(self.family, s) for s in seeds]).to(self.device)

    def __call__(self, task_ids: Sequence[int]) -> Dict[str, np.ndarray]:
        """Rows for ``task_ids`` as arrays with a leading batch axis ``B``."""
        ids = np.asarray(task_ids, dtype=np.int64)
        episodes = self.family.sample_many(self.split, ids, self.base_seed)
        to_x = lambda a: self.family.to_torch(a).to(self.device)  # noqa: E731
        to_y = lambda a: self.family.targets_to_torch(a).to(self.device)  # noqa: E731
        px, py, qx, qy = to_x(episodes["pool_x"]), to_y(episodes["pool_y"]), to_x(episodes["query_x"]), to_y(episodes["query_y"])
        if self.theta0_mode == "prototype":  # heads: each task starts at the ProtoNet head of its own support
            idx = torch.as_tensor(episodes["support_idx"], dtype=torch.long, device=self.device)
            every = torch.arange(len(ids), device=self.device)
            theta0 = prototype_head(pick_points(px, every, idx), pick_points(py, every, idx), self.family.pool_classes)
        else:
            theta0 = self.theta0_for(ids)
        checkpoints = run_batched(self.loss, theta0, px, py, self.opt)
        pool_loss = evaluate(self.loss, checkpoints, px, py)
        query_loss = evaluate(self.loss, checkpoints, qx, qy)
        query_metric = query_loss if self.family.loss == "mse" else evaluate(self.metric, checkpoints, qx, qy)
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
