"""Generators: built from config + data facts, saved as safetensors checkpoints, used through the API."""

from ltdi_ray.generator.api import WeightGenerator, load_generator
from ltdi_ray.generator.build import DataFacts, build_diffusion, build_model, support_of

__all__ = ["DataFacts", "WeightGenerator", "build_diffusion", "build_model", "load_generator", "support_of"]
