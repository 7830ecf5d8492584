"""Task families in one registry, each with a (train, val, test) split."""

from typing import Callable, Dict, Optional

from ltdi_ray.errors import ConfigError
from ltdi_ray.tasks.base import SPLITS, TaskFamily, task_seed
from ltdi_ray.tasks.omniglot import OmniglotFamily
from ltdi_ray.tasks.sinusoid import SinusoidFamily

FAMILIES: Dict[str, Callable[..., TaskFamily]] = {
    "sinusoid": lambda cfg, endpoint_url=None: SinusoidFamily(cfg),
    "omniglot": OmniglotFamily,
}


def make_family(task_cfg, endpoint_url: Optional[str] = None) -> TaskFamily:
    """Build the family named by ``task_cfg.family`` (``endpoint_url`` serves s3:// data roots)."""
    try:
        factory = FAMILIES[task_cfg.family]
    except KeyError:
        raise ConfigError(f"unknown task family {task_cfg.family!r} (known: {', '.join(sorted(FAMILIES))})") from None
    return factory(task_cfg, endpoint_url=endpoint_url)


__all__ = ["FAMILIES", "SPLITS", "TaskFamily", "make_family", "task_seed"]
