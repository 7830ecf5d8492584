"""The base networks: the ones whose weights are generated, evaluated functionally on a flat weight
vector (their ParamSpec maps one to the other)."""

from ltdi_ray.base_nets.conv import ConvNet, HeadNet, LinearHead
from ltdi_ray.base_nets.mlp import MLP
from ltdi_ray.base_nets.paramspec import ParamSpec

__all__ = ["ConvNet", "HeadNet", "LinearHead", "MLP", "ParamSpec"]
