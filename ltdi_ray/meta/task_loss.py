"""The diffusion loss of a batch of tasks, each conditioned on its own support set."""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from ltdi_ray.diffusion import Diffusion
from ltdi_ray.generator.network import GeneratorNet


def task_loss(gen: GeneratorNet, diffusion: Diffusion, targets: torch.Tensor, support_x: torch.Tensor,
              support_y: torch.Tensor, draws: int = 1, generator: Optional[torch.Generator] = None,
              draw: Optional[Dict[str, torch.Tensor]] = None, extra_loss: Optional[Callable] = None) -> torch.Tensor:
    """The diffusion loss of B tasks: targets ``(B, k, D)`` normalised, supports ``(B, K, ...)``.

    Each task's targets are noised ``draws`` times (fresh t and eps per draw and segment), from
    ``generator`` or from a ready ``draw`` for the ``B * draws`` repeated target rows.
    ``extra_loss(pred, end, task)`` (bridge only) is added, ``task`` indexing the B tasks.
    """
    c = gen.cond(support_x, support_y).repeat_interleave(draws, dim=0)
    repeated = targets.repeat_interleave(draws, dim=0)
    if extra_loss is None:
        return diffusion.training_loss(gen.denoiser, repeated, c, generator, draw)
    return diffusion.training_loss(gen.denoiser, repeated, c, generator, draw,
                                   extra_loss=lambda pred, end, rows: extra_loss(pred, end, rows // draws))
