"""Base networks evaluated functionally on a flat weight vector, and their ParamSpec."""

from ltdi_ray.nets.conv import ConvNet, HeadNet, LinearHead
from ltdi_ray.nets.mlp import MLP
from ltdi_ray.nets.paramspec import ParamSpec

__all__ = ["ConvNet", "HeadNet", "LinearHead", "MLP", "ParamSpec"]
