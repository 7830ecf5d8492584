"""The prepare stage: what the task family needs made once per run root before the other stages
(``TaskFamily.prepare``; Omniglot heads: the frozen feature extractor). Every stage calls
:func:`prepare` first, so running it on its own is optional."""

from __future__ import annotations

import time

from ltdi_ray.config.compose import config_changes, to_plain
from ltdi_ray.config.schema import Config
from ltdi_ray.tasks import family_class


def prepare(cfg: Config) -> Config:
    """``cfg`` pointing at what the family prepared (unchanged for families that need nothing)."""
    return family_class(cfg.task.family).prepare(cfg)


def run_prepare(cfg: Config) -> dict:
    """``{"stage", "family", "prepared": ["key: old -> new", ...], "seconds"}``."""
    tic = time.time()
    ready = prepare(cfg)
    return {"stage": "prepare", "family": family_class(cfg.task.family).name,
            "prepared": config_changes(to_plain(cfg), to_plain(ready)), "seconds": round(time.time() - tic, 2)}
