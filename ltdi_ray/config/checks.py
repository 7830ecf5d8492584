"""The one way config invariants fail: a :class:`ConfigError` that names the full key."""

from ltdi_ray.errors import ConfigError


def check(ok: bool, key: str, message: str) -> None:
    """Raise a :class:`ConfigError` naming ``key`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")
