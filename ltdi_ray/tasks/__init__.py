"""Task families: the one registry of them, and the contract each fulfils (``tasks/base.py``).

``task.family`` names a family in one of three ways:

* a built-in name: ``sinusoid``, ``omniglot``, ``text``;
* a name another installed package declares under the entry-point group ``ltdi_ray.families``;
* an import path ``package.module:Class`` (the module must be importable where the stages run:
  the driver's working directory, ``PYTHONPATH``, ``ray job submit --working-dir`` or an installed package).
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Dict, Optional, Type

from ltdi_ray.errors import ConfigError
from ltdi_ray.tasks.base import (
    SPLITS,
    ClassificationFamily,
    FieldSpec,
    RegressionFamily,
    TaskFamily,
    counter_uniform,
    task_seed,
)

BUILT_IN: Dict[str, str] = {
    "sinusoid": "ltdi_ray.tasks.sinusoid:SinusoidFamily",
    "omniglot": "ltdi_ray.tasks.omniglot:OmniglotFamily",
    "text": "ltdi_ray.tasks.text:TextFamily",
}
ENTRY_POINTS = "ltdi_ray.families"


def known_families() -> Dict[str, str]:
    """Registered name -> import path: the built-in families and those of installed packages."""
    return {**{ep.name: ep.value for ep in entry_points(group=ENTRY_POINTS)}, **BUILT_IN}


@lru_cache(maxsize=None)
def family_class(spec: str) -> Type[TaskFamily]:
    """The family class ``spec`` names (a registered name or ``package.module:Class``)."""
    path = known_families().get(spec, spec)
    if ":" not in path:
        raise ConfigError(f"unknown task family {spec!r}: use one of {', '.join(sorted(known_families()))} "
                          "or an import path package.module:Class")
    module_name, _, attr = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"task.family={spec}: cannot import {path} ({type(err).__name__}: {err})") from None
    if not (isinstance(cls, type) and issubclass(cls, TaskFamily)):
        raise ConfigError(f"task.family={spec}: {path} is not a subclass of ltdi_ray.tasks.TaskFamily")
    if not hasattr(cls, "Config"):
        raise ConfigError(f"task.family={spec}: {path} has no Config dataclass (docs/extending.md)")
    return cls


def make_family(task_cfg, endpoint_url: Optional[str] = None) -> TaskFamily:
    """Build the family named by ``task_cfg.family`` (``endpoint_url`` serves s3:// data roots)."""
    return family_class(task_cfg.family)(task_cfg, endpoint_url)


__all__ = ["BUILT_IN", "SPLITS", "ClassificationFamily", "FieldSpec", "RegressionFamily", "TaskFamily",
           "counter_uniform", "family_class", "known_families", "make_family", "task_seed"]
