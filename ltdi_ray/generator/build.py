"""Build the generator's parts from a config and the facts of a trajectory dataset.

Sizes come from the data (D from the ParamSpec, C from the saved steps), never from the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from ltdi_ray.config.schema import Config, chain_loss_weight, function_loss_weight
from ltdi_ray.diffusion import Diffusion, make_diffusion
from ltdi_ray.meta import Generator
from ltdi_ray.models import (PRESETS, ClassTokenDenoiser, ImagePrototypeEncoder, PrototypeEncoder, ResMLPDenoiser,
                             SetEncoder, WeightNormalizer)
from ltdi_ray.models.heads import prototype_head, tie_rows
from ltdi_ray.tasks import TaskFamily


@dataclass(frozen=True)
class DataFacts:
    """What a generator needs to know about its training data."""

    dim: int  # D
    checkpoint_steps: List[int]  # the inner-loop step of each saved checkpoint


def build_diffusion(cfg: Config) -> Diffusion:
    d = cfg.diffusion
    return make_diffusion(d.variant, d.schedule, d.steps, d.segments, d.parameterization, d.weighting, d.clip,
                          d.bridge_noise, d.bridge_residual, d.bridge_start_noise, d.segment_draw)


def build_model(cfg: Config, family: TaskFamily, facts: DataFacts) -> Generator:
    """Task encoder + denoiser for ``family`` over D-dim weights."""
    preset, width = PRESETS[cfg.model.preset], cfg.model.encoder_width
    if family.loss == "mse":
        fields = family.fields()
        x_dim, y_dim = fields["pool_x"][0][-1], fields["pool_y"][0][-1]
        return Generator(SetEncoder(x_dim, y_dim, preset.cond_dim, width, cfg.model.encoder_fourier,
                                    cfg.model.encoder_fourier_scale, cfg.model.encoder_ridge),
                         ResMLPDenoiser(facts.dim, cfg.diffusion.steps, preset))
    ways = cfg.task.ways
    if cfg.task.generate == "head":  # one token per class row (F weights + bias); F from the data
        row = facts.dim // ways
        return Generator(PrototypeEncoder(row - 1, preset.cond_dim, width, ways),
                         ClassTokenDenoiser(row, cfg.diffusion.steps, preset))
    return Generator(ImagePrototypeEncoder(ways, preset.cond_dim, width),
                     ResMLPDenoiser(facts.dim, cfg.diffusion.steps, preset))


def support_of(episodes: dict, family: TaskFamily, device: torch.device = torch.device("cpu"), raw: bool = False):
    """The stored K-shot support of episodes ``(B, ...)`` as network-ready ``(sx, sy)`` (``raw``: ``sx`` as
    users pass it to ``generate_batch``)."""
    import numpy as np

    idx = episodes["support_idx"].astype(np.int64)
    take = lambda a: np.take_along_axis(a, idx.reshape(idx.shape + (1,) * (a.ndim - 2)), 1)  # noqa: E731
    sx = family.decode(take(episodes["pool_x"]))
    return (sx if raw else family.net_input(sx)).to(device), family.targets_to_torch(take(episodes["pool_y"])).to(device)


def make_normalizer(cfg: Config, mean, std) -> WeightNormalizer:
    """The weight normaliser from a dataset's statistics ``(D,)``; class rows of heads share theirs."""
    mean, std = torch.as_tensor(mean).float(), torch.as_tensor(std).float()
    if getattr(cfg.task, "generate", None) == "head":
        mean, std = tie_rows(mean, std, cfg.task.ways)
    return WeightNormalizer(mean, std)


def build_function_loss(cfg: Config, family: TaskFamily, spec, norm: WeightNormalizer):
    """The function-space term of ``train.function_loss`` over the dataset's ParamSpec ``spec`` for
    the trainer, or None when it is 0."""
    from ltdi_ray.meta.function_loss import FunctionSpaceLoss

    weight = function_loss_weight(cfg)
    if weight == 0:
        return None
    return FunctionSpaceLoss(family.build_net().to(norm.mean.device), spec, norm, weight, cfg.train.function_points)


def chain_start(cfg: Config, norm: WeightNormalizer, theta0: torch.Tensor, ways: Optional[int] = None):
    """Where the generator's chain starts for support features ``(sx, sy)``: normalised ``(B, D)``, each
    task's ProtoNet head over ``ways`` classes (``trajectory.theta0=prototype``: where its trajectory
    started) or the dataset's ``theta0 (D,)``."""
    if cfg.trajectory.theta0 == "prototype":
        return lambda sx, sy: norm.normalize(prototype_head(sx, sy, ways))
    return lambda sx, sy: norm.normalize(theta0.to(sx.device)).expand(sx.shape[0], -1)


def build_chain_loss(cfg: Config, family: TaskFamily, spec, norm: WeightNormalizer, theta0: torch.Tensor):
    """The chain's own task loss of ``train.chain_loss`` for the trainer, or None when it is 0."""
    from ltdi_ray.meta.chain_loss import ChainLoss

    weight = chain_loss_weight(cfg)
    if weight == 0:
        return None
    return ChainLoss(family.build_net().to(norm.mean.device), spec, norm, weight,
                     chain_start(cfg, norm, theta0, family.pool_classes), family.loss, cfg.diffusion.sample_steps)
