"""Base networks evaluated functionally on a flat weight vector, and their ParamSpec."""

from ltdi_ray.nets.conv import ConvNet, HeadNet
from ltdi_ray.nets.mlp import MLP
from ltdi_ray.nets.paramspec import ParamSpec

__all__ = ["ConvNet", "HeadNet", "MLP", "ParamSpec"]
