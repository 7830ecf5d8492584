"""Every stage by name, and the Python entry to them (the CLI uses the same registry).

    import ray, ltdi_ray
    ray.init()                                                   # optional: stages attach to a running Ray
    cfg = ltdi_ray.compose("experiment=smoke", "storage.uri=/tmp/run")
    summary = ltdi_ray.run("pipeline", cfg)                      # the same summary the CLI prints
"""

from __future__ import annotations

import importlib
from typing import Callable, Dict, Union

from ltdi_ray.config.compose import load_config
from ltdi_ray.config.schema import Config
from ltdi_ray.errors import ConfigError

STAGES: Dict[str, str] = {  # name -> run_<stage>(cfg) -> summary
    "prepare": "ltdi_ray.pipelines.prepare:run_prepare",
    "collect": "ltdi_ray.pipelines.collect:run_collect",
    "train": "ltdi_ray.pipelines.train:run_train",
    "evaluate": "ltdi_ray.pipelines.evaluate:run_evaluate",
    "pipeline": "ltdi_ray.pipelines.pipeline:run_pipeline",
    "tune": "ltdi_ray.pipelines.tune:run_tune",
    "plot": "ltdi_ray.pipelines.plot:run_plot",
}


def stage(name: str) -> Callable[[Config], dict]:
    """``run_<name>``; a :class:`ConfigError` for an unknown stage."""
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; choose one of: {', '.join(STAGES)}")
    module, _, attr = STAGES[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def compose(*overrides: str) -> Config:
    """The validated config of ``key=value`` overrides (as on the command line; ``config_file=PATH`` too)."""
    return load_config(list(overrides))


def run(name: str, cfg: Union[Config, str, None] = None, *overrides: str) -> dict:
    """Run stage ``name`` on ``cfg`` (a composed config, or the first override) plus ``overrides``;
    returns its summary. A ``ray.init()`` already made is used as it is."""
    if not isinstance(cfg, Config):
        cfg = compose(*([cfg] if cfg else []), *overrides)
    elif overrides:
        raise ConfigError("pass overrides to compose(...), or a composed config alone")
    return stage(name)(cfg)
