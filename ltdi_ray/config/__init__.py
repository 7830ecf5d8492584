"""Configuration: dataclass schemas, Hydra composition and validation."""

from ltdi_ray.config.compose import compose_dict, config_from_plain, load_config, to_config, to_plain
from ltdi_ray.config.schema import CollectConfig, Config, RayConfig, StorageConfig, TrajectoryConfig

__all__ = ["CollectConfig", "Config", "RayConfig", "StorageConfig", "TrajectoryConfig", "compose_dict",
           "config_from_plain", "load_config", "to_config", "to_plain"]
