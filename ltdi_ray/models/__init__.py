"""Task encoders, denoisers and the weight normaliser (plain torch, no diffusion math)."""

from ltdi_ray.models.denoiser import PRESETS, ResMLPDenoiser, timestep_embedding
from ltdi_ray.models.encoders import ImagePrototypeEncoder, SetEncoder
from ltdi_ray.models.heads import ClassTokenDenoiser, PrototypeEncoder, head_flat, head_rows, prototype_head
from ltdi_ray.models.normalizer import WeightNormalizer

__all__ = ["PRESETS", "ClassTokenDenoiser", "ImagePrototypeEncoder", "PrototypeEncoder", "ResMLPDenoiser", "SetEncoder", "WeightNormalizer",
           "head_flat", "head_rows", "prototype_head", "timestep_embedding"]
