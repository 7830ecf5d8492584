"""Task encoders, denoisers and the weight normaliser (plain torch, no diffusion math)."""

from ltdi_ray.models.denoiser import PRESETS, ResMLPDenoiser, timestep_embedding
from ltdi_ray.models.encoders import SetEncoder
from ltdi_ray.models.heads import ClassTokenDenoiser, PrototypeEncoder, head_flat, head_rows
from ltdi_ray.models.normalizer import WeightNormalizer

__all__ = ["PRESETS", "ClassTokenDenoiser", "PrototypeEncoder", "ResMLPDenoiser", "SetEncoder", "WeightNormalizer",
           "head_flat", "head_rows", "timestep_embedding"]
