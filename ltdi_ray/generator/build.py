"""Build the generator's parts from a config and the facts of a trajectory dataset.

Sizes come from the data (D from the ParamSpec, C from the saved steps), never from the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch

from ltdi_ray.config.schema import Config
from ltdi_ray.diffusion import Diffusion, make_diffusion
from ltdi_ray.errors import ConfigError
from ltdi_ray.meta import Generator
from ltdi_ray.models import PRESETS, ResMLPDenoiser, SetEncoder
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
    preset = PRESETS[cfg.model.preset]
    if family.loss != "mse":
        raise ConfigError(f"task.family={family.name}: generators for classification heads are not built yet "
                          "(issue 6); sinusoid is supported")
    fields = family.fields()
    x_dim, y_dim = fields["pool_x"][0][-1], fields["pool_y"][0][-1]
    encoder = SetEncoder(x_dim, y_dim, preset.cond_dim, cfg.model.encoder_width)
    return Generator(encoder, ResMLPDenoiser(facts.dim, cfg.diffusion.steps, preset))


def support_of(episodes: dict, family: TaskFamily, device: torch.device = torch.device("cpu")):
    """The stored K-shot support of episodes ``(B, ...)`` as network-ready ``(sx, sy)``."""
    import numpy as np

    idx = episodes["support_idx"].astype(np.int64)
    take = lambda a: np.take_along_axis(a, idx.reshape(idx.shape + (1,) * (a.ndim - 2)), 1)  # noqa: E731
    return (family.to_torch(take(episodes["pool_x"])).to(device),
            family.targets_to_torch(take(episodes["pool_y"])).to(device))
