"""Few-shot polynomial regression: a complete task family from outside ``ltdi_ray``.

Each task is a random polynomial y = c_0 + c_1 x + ... + c_d x^d on x in [-1, 1] (coefficients uniform in
``coef_range``, plus optional Gaussian noise on the targets); the network to generate is a small MLP. The
family subclasses ``RegressionFamily``, which supplies the loss and metric (MSE), the targets and the set
encoder of the support; this module adds the rest: its config, how episodes are drawn, the base network.

    cd examples/polynomial
    python -m ltdi_ray pipeline config_file=polynomial.yaml experiment=smoke   # toy scale, a few minutes
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from ltdi_ray.base_nets import MLP
from ltdi_ray.config.checks import check
from ltdi_ray.tasks import RegressionFamily, task_seed


@dataclass
class PolynomialConfig:
    """The ``task`` config node: every key can be set as ``task.<key>=...``."""

    family: str = "fewshot_poly:PolynomialFamily"
    shots: int = 5  # K: the support, the generator's condition
    pool_size: int = 40  # points the inner optimiser trains on (the support is drawn from them)
    query_size: int = 40  # held-out points for scoring
    degree: int = 3
    coef_range: List[float] = field(default_factory=lambda: [-1.0, 1.0])
    noise: float = 0.0  # standard deviation of Gaussian noise on the targets
    hidden: List[int] = field(default_factory=lambda: [32, 32])

    def __post_init__(self) -> None:
        check(1 <= self.shots <= self.pool_size, "task.shots", f"must be in [1, task.pool_size], got {self.shots}")
        check(self.query_size >= 1, "task.query_size", f"must be >= 1, got {self.query_size}")
        check(0 <= self.degree <= 10, "task.degree", f"must be in [0, 10], got {self.degree}")
        check(len(self.coef_range) == 2 and self.coef_range[0] < self.coef_range[1], "task.coef_range",
              f"must be [low, high] with low < high, got {list(self.coef_range)}")
        check(self.noise >= 0, "task.noise", f"must be >= 0, got {self.noise}")


class PolynomialFamily(RegressionFamily):
    name = "polynomial"  # task seeds, manifests and the default run directory (./ltdi_runs/polynomial)
    Config = PolynomialConfig

    def fields(self):
        c = self.cfg
        return {"coefs": ((c.degree + 1,), "float32"),
                "pool_x": ((c.pool_size, 1), "float32"), "pool_y": ((c.pool_size, 1), "float32"),
                "support_idx": ((c.shots,), "int32"),
                "query_x": ((c.query_size, 1), "float32"), "query_y": ((c.query_size, 1), "float32")}

    def sample(self, split: str, index: int, base_seed: int = 0) -> Dict[str, np.ndarray]:
        c = self.cfg
        rng = np.random.default_rng(task_seed(self.name, split, index, base_seed))  # any task alone, any time
        coefs = rng.uniform(*c.coef_range, size=c.degree + 1)
        x = rng.uniform(-1.0, 1.0, size=(c.pool_size + c.query_size, 1))
        y = np.polynomial.polynomial.polyval(x, coefs) + c.noise * rng.standard_normal(x.shape)
        f32 = lambda a: a.astype(np.float32)  # noqa: E731
        return {"coefs": f32(coefs), "pool_x": f32(x[:c.pool_size]), "pool_y": f32(y[:c.pool_size]),
                "support_idx": rng.choice(c.pool_size, size=c.shots, replace=False).astype(np.int32),
                "query_x": f32(x[c.pool_size:]), "query_y": f32(y[c.pool_size:])}

    def build_net(self, ways: Optional[int] = None) -> torch.nn.Module:
        return MLP(1, self.cfg.hidden, 1)

    def decode(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
