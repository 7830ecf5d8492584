"""A function-space term for the generator's loss (``train.function_loss``; not in the paper).

The diffusion loss measures errors in normalised weight space, where every coordinate counts the
same; what a generated network is judged by is its outputs. This term adds the mean squared
difference between the base network's outputs at the predicted segment end and at its target, on
the task's pool points (a Gauss-Newton-like metric on weight space). Measured in
docs/results/method-choices.md.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.func import functional_call, vmap

from ltdi_ray.base_nets.paramspec import ParamSpec
from ltdi_ray.generator.normalizer import WeightNormalizer


class FunctionSpaceLoss:
    """``(pred (N, D), target (N, D), x (N, P, ...)) -> weight * mean ||f(pred; x) - f(target; x)||^2``,
    weights normalised, ``x`` the network inputs of each row's task; with ``points`` = n, only every
    ``P // n``-th pool point (a fixed, evenly spread subset: the cost is the base net over N x n points)."""

    def __init__(self, net: torch.nn.Module, spec: ParamSpec, norm: WeightNormalizer, weight: float,
                 points: int = 0):
        self.net, self.spec, self.norm, self.weight, self.points = net, spec, norm, weight, points

    def _outputs(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.net, self.spec.unflatten(theta), (x,))

    def __call__(self, pred: torch.Tensor, target: torch.Tensor, x: torch.Tensor,
                 rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``rows (N,)``: row i's inputs are ``x[rows[i]]`` (x then holds each task once), so only the
        kept points are gathered for the N rows."""
        if self.points:
            x = x[:, :: max(1, x.shape[1] // self.points)]
        if rows is not None:
            x = x[rows]
        with torch.no_grad():
            reference = vmap(self._outputs)(self.norm.denormalize(target), x)
        return self.weight * (vmap(self._outputs)(self.norm.denormalize(pred), x) - reference).square().mean()
