"""Connecting to Ray and turning errors raised inside Ray back into one-line user errors."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator, Optional

from ltdi_ray.config.schema import RayConfig
from ltdi_ray.errors import LtdiError

log = logging.getLogger("ltdi_ray")


def ensure_ray(cfg: RayConfig) -> None:
    """Connect once: ``ray.address``, else ``RAY_ADDRESS`` (set by ``ray job submit``), else a
    fresh local instance (``address="local"`` never attaches to a stale local cluster)."""
    import ray

    if ray.is_initialized():
        return
    if cfg.address:
        ray.init(address=cfg.address)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(address="local", num_cpus=cfg.num_cpus)
    log.info("ray: %s", {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")})


def find_user_error(err: BaseException) -> Optional[LtdiError]:
    """The :class:`LtdiError` at the root of a Ray task/actor/data error chain, if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, LtdiError):
            return err
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
    return None


@contextmanager
def user_errors_from_ray() -> Iterator[None]:
    """Re-raise a user error raised on a Ray worker as itself, not as Ray's wrapper."""
    try:
        yield
    except Exception as err:
        user = find_user_error(err)
        if user is None or user is err:
            raise
        raise type(user)(str(user)) from None
