"""Sinusoid regression (MAML protocol): y = A sin(x - p), A ~ U[0.1, 5], p ~ U[0, pi], x ~ U[-5, 5]."""

from typing import Dict

import numpy as np
import torch

from ltdi_ray.config.schema import SinusoidTaskConfig
from ltdi_ray.nets.mlp import MLP
from ltdi_ray.tasks.base import FieldSpec, TaskFamily, task_seed


class SinusoidFamily(TaskFamily):
    """Episodes: pool of ``pool_size`` points, K-shot support drawn from it, fresh query points."""

    name = "sinusoid"
    loss = "mse"

    def __init__(self, cfg: SinusoidTaskConfig):
        self.cfg = cfg

    def fields(self) -> FieldSpec:
        c = self.cfg
        return {
            "amplitude": ((), "float32"),
            "phase": ((), "float32"),
            "pool_x": ((c.pool_size, 1), "float32"),
            "pool_y": ((c.pool_size, 1), "float32"),
            "support_idx": ((c.shots,), "int32"),
            "query_x": ((c.query_size, 1), "float32"),
            "query_y": ((c.query_size, 1), "float32"),
        }

    def sample(self, split: str, index: int, base_seed: int = 0) -> Dict[str, np.ndarray]:
        c = self.cfg
        rng = np.random.default_rng(task_seed(self.name, split, index, base_seed))
        amp, phase = rng.uniform(*c.amplitude), rng.uniform(*c.phase)
        pool_x = rng.uniform(*c.x_range, size=(c.pool_size, 1))
        query_x = rng.uniform(*c.x_range, size=(c.query_size, 1))
        support_idx = rng.choice(c.pool_size, size=c.shots, replace=False)
        f32 = np.float32
        return {
            "amplitude": np.array(amp, f32),
            "phase": np.array(phase, f32),
            "pool_x": pool_x.astype(f32),
            "pool_y": (amp * np.sin(pool_x - phase)).astype(f32),
            "support_idx": support_idx.astype(np.int32),
            "query_x": query_x.astype(f32),
            "query_y": (amp * np.sin(query_x - phase)).astype(f32),
        }

    def build_net(self) -> torch.nn.Module:
        return MLP(1, self.cfg.hidden, 1)

    def to_torch(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def describe(self) -> dict:
        c = self.cfg
        return {**super().describe(), "amplitude": list(c.amplitude), "phase": list(c.phase), "x_range": list(c.x_range)}
