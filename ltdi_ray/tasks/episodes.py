"""Episode arrays -> tensors: supports gathered from pools, random class-balanced picks."""

from __future__ import annotations

import numpy as np
import torch

from ltdi_ray.tasks.base import TaskFamily


def pick_points(data: torch.Tensor, tasks: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
    """Points ``picks (B, K)`` of tasks ``tasks (B,)`` from ``data (N, P, ...)`` -> ``(B, K, ...)``."""
    index = picks.view(picks.shape + (1,) * (data.dim() - 2)).expand(picks.shape + data.shape[2:])
    return torch.gather(data[tasks], 1, index)


def draw_picks(rng: np.random.Generator, tasks: int, pool: int, count: int, classes: int = 1) -> np.ndarray:
    """Distinct random pool positions ``(tasks, classes, count)``: ``count`` from each of ``classes``
    equal class-major blocks of a pool of ``pool`` points (``classes = 1``: from anywhere)."""
    block = pool // classes
    order = np.argsort(rng.random((tasks, classes, block)), axis=2)[:, :, :count]
    return order + (np.arange(classes) * block)[None, :, None]


def support_of(episodes: dict, family: TaskFamily, device: torch.device = torch.device("cpu"), raw: bool = False):
    """The stored K-shot support of episodes ``(B, ...)`` as network-ready ``(sx, sy)`` (``raw``: ``sx`` as
    users pass it to ``generate_batch``)."""
    idx = episodes["support_idx"].astype(np.int64)
    take = lambda a: np.take_along_axis(a, idx.reshape(idx.shape + (1,) * (a.ndim - 2)), 1)  # noqa: E731
    sx = family.decode(take(episodes["pool_x"]))
    return (sx if raw else family.net_input(sx)).to(device), family.targets_to_torch(take(episodes["pool_y"])).to(device)
