"""Ablation generators: trained like the evaluated one with some config keys changed, once per run root
(under ``<storage.uri>/ablations/<name>``) and reused by later evaluations."""

from __future__ import annotations

import logging
from dataclasses import replace

from ltdi_ray.config.compose import config_from_plain, to_plain
from ltdi_ray.storage.fs import Location

log = logging.getLogger("ltdi_ray")


def ablation_config(gen_cfg, changes: dict, epochs=None):
    """The generator's config with ``changes`` (section -> {key: value}) and ``epochs`` (None: as trained)."""
    plain = to_plain(gen_cfg)
    for section, values in changes.items():
        plain[section].update(values)
    if epochs is not None:
        plain["train"]["epochs"] = epochs
    return config_from_plain(plain)


def is_the_generator(cfg, gen_cfg, changes: dict) -> bool:
    """Whether the ablation with ``changes`` (trained for ``cfg.evaluate.ablation_epochs``) would train the
    generator of ``gen_cfg`` again."""
    abl = ablation_config(gen_cfg, changes, cfg.evaluate.ablation_epochs)
    return all(to_plain(getattr(abl, k)) == to_plain(getattr(gen_cfg, k)) for k in ("diffusion", "model", "train"))


def ablation_location(storage, name: str) -> Location:
    """Where the ablation ``name`` of the run at ``storage`` (the ``storage`` config node) is published."""
    return Location.parse(storage.uri, storage.endpoint_url).child("ablations", name)


def ablation_generator(cfg, gen, name: str, changes: dict):
    """Train (or reuse) the generator of ablation ``name``; the evaluated one itself where it already is it
    (e.g. single_level when train.meta=none)."""
    from ltdi_ray.generator.api import load_generator
    from ltdi_ray.pipelines.train import finished, run_name, run_train

    if is_the_generator(cfg, gen.cfg, changes):
        return gen
    abl = replace(ablation_config(gen.cfg, changes, cfg.evaluate.ablation_epochs), ray=cfg.ray, storage=cfg.storage,
                  verbose=cfg.verbose)
    where = ablation_location(cfg.storage, name)
    if finished(where, run_name(abl), abl.train.epochs) is None:
        log.info("evaluate: training the %s ablation", name)
        run_train(abl, name=f"ablations/{name}")
    return load_generator(str(where), cfg.storage.endpoint_url)


def tasks_per_s(gen) -> float:
    """The mean training throughput over a generator's epochs (its checkpoint's history)."""
    history = gen.meta.get("history") or [gen.meta["metrics"]]
    return sum(h["tasks_per_s"] for h in history) / len(history)
