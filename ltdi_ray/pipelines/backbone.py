"""The backbone stage: pre-train ``head`` mode's frozen feature extractor on the training characters.

Every stage calls :func:`ensure_backbone` first, so with ``task.generate=head`` and no
``task.backbone`` the extractor is trained once into ``<storage.uri>/backbone`` (weights, then
``backbone.json`` last as the completion marker) and every later stage and the stored configs
point at that file.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace

import numpy as np

from ltdi_ray.config.schema import Config
from ltdi_ray.errors import ConfigError
from ltdi_ray.generator.build import support_of
from ltdi_ray.models.heads import prototype_head
from ltdi_ray.nets.paramspec import ParamSpec
from ltdi_ray.nets.pretrain import PretrainSettings, pretrain_backbone
from ltdi_ray.storage.artifact import read_json, write_json
from ltdi_ray.storage.fs import Location
from ltdi_ray.tasks import make_family
from ltdi_ray.trajectories import evaluate, make_metric

log = logging.getLogger("ltdi_ray")
WEIGHTS, RECORD = "backbone.safetensors", "backbone.json"


def needs_backbone(cfg: Config) -> bool:
    return getattr(cfg.task, "generate", None) == "head" and cfg.task.backbone is None


def _settings(cfg: Config) -> PretrainSettings:
    t, b = cfg.task, cfg.backbone
    return PretrainSettings(t.channels, t.depth, t.image_size, t.rotate_train, b.epochs, b.lr, b.batch_size, b.seed)


def protonet_accuracy(cfg: Config, split: str = "val", episodes: int = 200) -> float:
    """Mean query accuracy of nearest-class-mean on the backbone's features over ``episodes`` episodes."""
    family = make_family(cfg.task, cfg.storage.endpoint_url)
    eps = family.sample_many(split, range(episodes), cfg.collect.seed)
    sx, sy = support_of(eps, family)
    heads = prototype_head(sx, sy, cfg.task.ways)
    net = family.build_net()
    metric = make_metric(net, ParamSpec.from_module(net), family.loss)
    qx, qy = family.to_torch(eps["query_x"]), family.targets_to_torch(eps["query_y"])
    return float(evaluate(metric, heads.unsqueeze(1), qx, qy).mean())


def _location(cfg: Config) -> Location:
    return Location.parse(cfg.storage.uri, cfg.storage.endpoint_url).child("backbone")


def run_backbone(cfg: Config) -> dict:
    """Train (or find) the extractor; ``{"stage", "uri", "epochs", "loss", "val_protonet_acc", "seconds"}``."""
    if getattr(cfg.task, "generate", None) != "head":
        raise ConfigError("the backbone stage needs task=omniglot task.generate=head")
    start = time.time()
    resolved = ensure_backbone(cfg)
    summary = {"stage": "backbone", "uri": resolved.task.backbone}
    if needs_backbone(cfg):
        record = read_json(_location(cfg), RECORD)
        summary.update(epochs=len(record["loss"]), loss=round(record["loss"][-1], 4))
    summary["val_protonet_acc"] = round(protonet_accuracy(resolved), 4)
    return {**summary, "seconds": round(time.time() - start, 2)}


def ensure_backbone(cfg: Config) -> Config:
    """``cfg`` with ``task.backbone`` pointing at a trained extractor when head mode leaves it unset."""
    if not needs_backbone(cfg):
        return cfg
    loc = _location(cfg)
    settings = asdict(_settings(cfg))
    record = read_json(loc, RECORD)
    if record is not None and record["settings"] != settings:
        raise ConfigError(f"the backbone at {loc} was trained with other settings ({record['settings']}); "
                          "pass a new storage.uri or task.backbone")
    if record is None:
        family = make_family(cfg.task, cfg.storage.endpoint_url)
        images = family.images[np.asarray(family.splits["train"])]
        log.info("backbone: training the feature extractor on %d training characters", len(images))
        tic = time.time()
        net, history = pretrain_backbone(images, _settings(cfg))
        from safetensors.torch import save

        loc.write_atomic(WEIGHTS, save({k: v.contiguous() for k, v in net.state_dict().items()}))
        write_json(loc, RECORD, {"settings": settings, "loss": history, "characters": len(images),
                                 "seconds": round(time.time() - tic, 1)})
        log.info("backbone: wrote %s (loss %.3f -> %.3f)", loc.child(WEIGHTS), history[0], history[-1])
    return replace(cfg, task=replace(cfg.task, backbone=str(loc.child(WEIGHTS))))
