"""Meta-training rules for the generator (plain torch, no Ray)."""

from ltdi_ray.meta.reptile import Generator, apply_meta_gradient, reptile_meta_gradient, single_level_step, task_loss

__all__ = ["Generator", "apply_meta_gradient", "reptile_meta_gradient", "single_level_step", "task_loss"]
