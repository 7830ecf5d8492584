"""Build the generator's parts from a config, its task family and the facts of a trajectory dataset.

Sizes come from the data (D from the ParamSpec, C from the saved steps), never from the config; which
encoder, denoiser and normaliser a task needs is its family's choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np
import torch

from ltdi_ray.config.schema import Config, loss_term_weight
from ltdi_ray.diffusion import Diffusion, make_diffusion
from ltdi_ray.generator.denoisers import PRESETS
from ltdi_ray.generator.network import GeneratorNet
from ltdi_ray.generator.normalizer import WeightNormalizer
from ltdi_ray.meta.trainer import MetaTrainer
from ltdi_ray.tasks import TaskFamily
from ltdi_ray.trajectories.theta0 import Theta0


@dataclass(frozen=True)
class DataFacts:
    """What a generator needs to know about its training data."""

    dim: int  # D
    checkpoint_steps: List[int]  # the inner-loop step of each saved checkpoint


def build_diffusion(cfg: Config) -> Diffusion:
    return make_diffusion(cfg.diffusion)


def build_model(cfg: Config, family: TaskFamily, facts: DataFacts) -> GeneratorNet:
    """The family's task encoder + denoiser over D-dim weights."""
    preset = PRESETS[cfg.model.preset]
    return GeneratorNet(family.build_encoder(cfg.model, preset.cond_dim, facts.dim),
                        family.build_denoiser(facts.dim, cfg.diffusion.steps, preset))


def make_normalizer(family: TaskFamily, mean, std) -> WeightNormalizer:
    """The family's weight normaliser from a dataset's statistics ``(D,)`` (copied: arrays from Ray's object
    store are read-only)."""
    copy = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))  # noqa: E731
    return family.normalizer(copy(mean), copy(std))


def build_trainer(cfg: Config, family: TaskFamily, facts: DataFacts, spec, norm: WeightNormalizer, theta0: Theta0,
                  store, **outer) -> MetaTrainer:
    """The generator (its initial weights drawn under ``train.seed``: the same on every worker) and the outer
    loop that trains it on ``store``, with the loss terms the config asks for; ``outer``: MetaTrainer's
    data-parallel and schedule arguments. The generator is ``trainer.gen``."""
    device = store.targets.device
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, family, facts).to(device)
    return MetaTrainer(model, build_diffusion(cfg), store, cfg.train,
                       function_loss=build_function_loss(cfg, family, spec, norm),
                       chain_loss=build_chain_loss(cfg, family, spec, norm, theta0.to(device)), **outer)


def build_function_loss(cfg: Config, family: TaskFamily, spec, norm: WeightNormalizer):
    """The function-space term of ``train.function_loss`` over the dataset's ParamSpec ``spec`` for
    the trainer, or None when it is 0."""
    from ltdi_ray.meta.function_loss import FunctionSpaceLoss

    weight = loss_term_weight(cfg, "function_loss")
    if weight == 0:
        return None
    return FunctionSpaceLoss(family.build_net().to(norm.mean.device), spec, norm, weight, cfg.train.function_points)


def build_chain_loss(cfg: Config, family: TaskFamily, spec, norm: WeightNormalizer, theta0: Theta0):
    """The chain's own task loss of ``train.chain_loss`` for the trainer, or None when it is 0."""
    from ltdi_ray.meta.chain_loss import ChainLoss

    weight = loss_term_weight(cfg, "chain_loss")
    if weight == 0:
        return None
    start = lambda sx, sy: chain_starts(theta0, family, norm, sx, sy)  # noqa: E731
    return ChainLoss(family.build_net().to(norm.mean.device), spec, norm, weight, start, family.loss,
                     cfg.diffusion.sample_steps)


def chain_starts(theta0: Theta0, family: TaskFamily, norm: WeightNormalizer, sx: torch.Tensor,
                 sy: torch.Tensor, repeat: int = 1) -> torch.Tensor:
    """Normalised chain starts ``(B * repeat, D)`` of supports ``(sx, sy)`` (network inputs)."""
    return norm.normalize(theta0.for_supports(family, sx, sy)).repeat_interleave(repeat, dim=0)


__all__ = ["DataFacts", "build_chain_loss", "build_diffusion", "build_function_loss", "build_model",
           "chain_starts", "make_normalizer"]
