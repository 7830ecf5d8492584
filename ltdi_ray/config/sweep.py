"""The Tune sweep's schema: a search space over config keys, ASHA and concurrency settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ltdi_ray.config.checks import check

SAMPLERS = ("grid", "choice", "uniform", "loguniform", "randint")


def flatten_space(space: Dict[str, Any], prefix: str = "") -> List[Tuple[str, str, Any]]:
    """``(dotted config key, sampler, argument)`` for every leaf ``{sampler: argument}`` of a nested space."""
    out = []
    for key, value in space.items():
        path = f"{prefix}{key}"
        check(isinstance(value, dict) and len(value) > 0, f"tune.space.{path}",
              f"must map to {{sampler: values}} with a sampler in {', '.join(SAMPLERS)}")
        if len(value) == 1 and next(iter(value)) in SAMPLERS:
            sampler, arg = next(iter(value.items()))
            arg = list(arg)
            if sampler in ("grid", "choice"):
                check(len(arg) >= 1, f"tune.space.{path}.{sampler}", "must list at least one value")
            else:
                check(len(arg) == 2 and arg[0] < arg[1], f"tune.space.{path}.{sampler}",
                      f"must be [low, high] with low < high, got {arg}")
                check(sampler != "loguniform" or arg[0] > 0, f"tune.space.{path}.loguniform", "bounds must be > 0")
            out.append((path, sampler, arg))
        else:
            out += flatten_space(value, f"{path}.")
    return out


@dataclass
class SweepConfig:
    """``python -m ltdi_ray tune``: trials are training runs over ``space`` (conf/tune/default.yaml)."""

    name: str = "sweep"  # the sweep's directory under <storage.uri>/tune; re-running it resumes it
    space: Dict[str, Any] = field(default_factory=dict)  # nested config keys -> {grid|choice|...: values}
    num_samples: int = 1  # repeats of the grid (each draws the non-grid samplers anew)
    max_concurrent_trials: Optional[int] = None  # None: as many as the cluster's free CPUs/GPUs hold
    grace_period: int = 2  # ASHA: epochs every trial gets before it can be stopped
    reduction_factor: int = 2  # ASHA: keep 1 / reduction_factor at each rung
    max_failures: int = 1  # Tune restarts of a trial's driver

    def __post_init__(self) -> None:
        flatten_space(self.space)
        check(self.num_samples >= 1, "tune.num_samples", f"must be >= 1, got {self.num_samples}")
        check(self.max_concurrent_trials is None or self.max_concurrent_trials >= 1, "tune.max_concurrent_trials",
              f"must be >= 1 or null, got {self.max_concurrent_trials}")
        check(self.grace_period >= 1, "tune.grace_period", f"must be >= 1, got {self.grace_period}")
        check(self.reduction_factor >= 2, "tune.reduction_factor", f"must be >= 2, got {self.reduction_factor}")
        check(self.name not in ("", ".", "..") and "/" not in self.name and "\\" not in self.name, "tune.name",
              f"must be a plain directory name (no '/', not '.' or '..'), got {self.name!r}")
