"""The one way config invariants fail (a :class:`ConfigError` that names the full key), and path helpers."""

import os
from typing import List

from ltdi_ray.errors import ConfigError


def check(ok: bool, key: str, message: str) -> None:
    """Raise a :class:`ConfigError` naming ``key`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")


def check_memory(need_bytes: float, key: str, what: str) -> None:
    """Refuse, before allocating it, an amount of memory larger than this whole machine has (``what``: how the
    estimate is made). Only absurd sizes trip it: a value that fits here is left to the cluster."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    check(need_bytes <= total, key, f"{what} needs about {need_bytes / 2**30:.1f} GiB, more than this machine's "
          f"{total / 2**30:.1f} GiB; lower it")


def check_range(pair: List[float], key: str) -> None:
    check(len(pair) == 2 and pair[0] <= pair[1], key, f"must be [low, high] with low <= high, got {list(pair)}")


def absolute(uri: str) -> str:
    """Local paths become absolute when composed: Ray workers and Tune trials change directory."""
    if uri.startswith("s3://"):
        return uri
    return os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))
