"""Omniglot heads' frozen feature extractor: supervised pre-training on the training characters.

The conv net learns to classify every training character (and, with rotation augmentation, each
of its four rotations as its own class) from all its drawings; its conv layers then serve as the
fixed backbone whose features the generated heads and the baselines share. Validation and test
characters are never seen. :func:`ensure_backbone` (the family's ``prepare``) trains it once per run
root into ``<storage.uri>/backbone`` (weights, then ``backbone.json`` last as the completion marker),
and every later stage and stored config points at that file.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ltdi_ray.base_nets.conv import ConvNet
from ltdi_ray.config.checks import check
from ltdi_ray.errors import ConfigError

log = logging.getLogger("ltdi_ray")
WEIGHTS, RECORD = "backbone.safetensors", "backbone.json"


@dataclass
class PretrainConfig:
    """``task.pretrain``: how head mode's extractor is trained when ``task.backbone`` is unset."""

    epochs: int = 20  # Omniglot-242, 2-core CPU: 80 s; 5-way 1-shot ProtoNet val accuracy 0.87 at 10, 0.90 at 20
    lr: float = 1e-3
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "task.pretrain.epochs", f"must be >= 1, got {self.epochs}")
        check(self.lr > 0, "task.pretrain.lr", f"must be > 0, got {self.lr}")
        check(self.batch_size >= 1, "task.pretrain.batch_size", f"must be >= 1, got {self.batch_size}")


def character_classes(images: np.ndarray, rotate: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(C, R, S, S)`` uint8 drawings of C characters -> images ``(N, 1, S, S)`` in [0, 1] and labels ``(N,)``.

    With ``rotate`` every character contributes four classes (0, 90, 180, 270 degrees).
    """
    turns = range(4) if rotate else range(1)
    classes = [np.rot90(images, k=k, axes=(2, 3)) for k in turns]  # each (C, R, S, S)
    stacked = np.ascontiguousarray(np.concatenate(classes))  # (C * turns, R, S, S)
    n_cls, per = stacked.shape[:2]
    x = torch.from_numpy(stacked.reshape(n_cls * per, 1, *stacked.shape[2:])).float().div_(255.0)
    return x, torch.arange(n_cls).repeat_interleave(per)


def pretrain_backbone(images: np.ndarray, task_cfg, device: str = "cpu") -> Tuple[ConvNet, List[float]]:
    """Train a ConvNet classifier (``task_cfg``'s width, depth and image size; ``task_cfg.pretrain``'s
    schedule) on the training characters' drawings ``(C, R, S, S)``.

    Returns the trained net (its ``convs.*`` are the backbone) and the mean loss of each epoch.
    Deterministic given ``task_cfg.pretrain.seed`` on one device.
    """
    p = task_cfg.pretrain
    x, y = character_classes(images, task_cfg.rotate_train)
    gen = torch.Generator().manual_seed(p.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(p.seed)
        net = ConvNet(int(y.max()) + 1, task_cfg.channels, task_cfg.depth, task_cfg.image_size).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=p.lr)
    history = []
    for _ in range(p.epochs):
        order, total = torch.randperm(len(x), generator=gen), 0.0
        for idx in order.split(p.batch_size):
            loss = F.cross_entropy(net(x[idx].to(device)), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / len(x))
    return net.cpu().eval(), history


def protonet_accuracy(family, split: str = "val", episodes: int = 200, base_seed: int = 0) -> float:
    """Mean query accuracy of nearest-class-mean on ``family``'s features over ``episodes`` episodes."""
    from ltdi_ray.base_nets.paramspec import ParamSpec
    from ltdi_ray.tasks.episodes import support_of
    from ltdi_ray.trajectories.inner import evaluate, make_functional

    batch = family.sample_many(split, range(episodes), base_seed)
    sx, sy = support_of(batch, family)
    net = family.build_net()
    metric = make_functional(net, ParamSpec.from_module(net), family.metric)
    qx, qy = family.to_torch(batch["query_x"]), family.targets_to_torch(batch["query_y"])
    return float(evaluate(metric, family.support_start(sx, sy).unsqueeze(1), qx, qy).mean())


def _settings(task_cfg) -> dict:
    """What determines the trained extractor (its record refuses a mismatch)."""
    return {"channels": task_cfg.channels, "depth": task_cfg.depth, "image_size": task_cfg.image_size,
            "rotate": task_cfg.rotate_train, **asdict(task_cfg.pretrain)}


def ensure_backbone(cfg):
    """``cfg`` with ``task.backbone`` pointing at a trained extractor when head mode leaves it unset."""
    from safetensors.torch import save

    from ltdi_ray.storage.artifact import read_json, write_json
    from ltdi_ray.storage.fs import Location
    from ltdi_ray.tasks.omniglot import OmniglotFamily

    if cfg.task.generate != "head" or cfg.task.backbone is not None:
        return cfg
    loc = Location.parse(cfg.storage.uri, cfg.storage.endpoint_url).child("backbone")
    settings = _settings(cfg.task)
    record = read_json(loc, RECORD)
    if record is not None and record["settings"] != settings:
        raise ConfigError(f"the backbone at {loc} was trained with other settings ({record['settings']}); "
                          "pass a new storage.uri or task.backbone")
    resolved = replace(cfg, task=replace(cfg.task, backbone=str(loc.child(WEIGHTS))))
    if record is None:
        family = OmniglotFamily(cfg.task, cfg.storage.endpoint_url)
        images = family.images[np.asarray(family.splits["train"])]
        log.info("backbone: training the feature extractor on %d training characters", len(images))
        tic = time.time()
        net, history = pretrain_backbone(images, cfg.task)
        loc.write_atomic(WEIGHTS, save({k: v.contiguous() for k, v in net.state_dict().items()}))
        accuracy = protonet_accuracy(OmniglotFamily(resolved.task, cfg.storage.endpoint_url), base_seed=cfg.collect.seed)
        write_json(loc, RECORD, {"settings": settings, "loss": history, "characters": len(images),
                                 "val_protonet_acc": round(accuracy, 4), "seconds": round(time.time() - tic, 1)})
        log.info("backbone: wrote %s (loss %.3f -> %.3f, validation ProtoNet accuracy %.3f)", loc.child(WEIGHTS),
                 history[0], history[-1], accuracy)
    return resolved
