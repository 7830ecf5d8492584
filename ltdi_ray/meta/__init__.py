"""Meta-training rules for the generator and the gradient-based baselines (plain torch, no Ray)."""

from ltdi_ray.meta.baselines import MetaInitConfig, adapt, train_meta_init
from ltdi_ray.meta.reptile import Generator, apply_meta_gradient, reptile_meta_gradient, single_level_step, task_loss
from ltdi_ray.meta.trainer import MetaTrainer, TaskStore

__all__ = ["Generator", "MetaInitConfig", "MetaTrainer", "TaskStore", "adapt", "apply_meta_gradient",
           "reptile_meta_gradient", "single_level_step", "task_loss", "train_meta_init"]
