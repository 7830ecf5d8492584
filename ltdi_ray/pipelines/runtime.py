"""Connecting to Ray and turning errors raised inside Ray back into one-line user errors."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from typing import Iterator, Optional

from ltdi_ray.config.schema import RayConfig
from ltdi_ray.errors import LtdiError

log = logging.getLogger("ltdi_ray")


def ensure_ray(cfg: RayConfig) -> None:
    """Connect once: ``ray.address``, else ``RAY_ADDRESS`` (set by ``ray job submit``), else a
    fresh local instance (``address="local"`` never attaches to a stale local cluster)."""
    import ray
    import ray.data

    # a user error raised in a Ray Data task (a tampered file, a dead endpoint) reaches the driver as
    # itself: Ray Data's UserCodeException wrapper does not carry its cause back from the worker
    ray.data.DataContext.get_current().raise_original_map_exception = True
    for name in ("ray", "ray.data"):
        for handler in logging.getLogger(name).handlers:
            if handler.get_name() != "file" and not any(isinstance(f, HideUserErrors) for f in handler.filters):
                handler.addFilter(HideUserErrors())
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
        if isinstance(err, LtdiError) and type(err).__module__.startswith("ltdi_ray"):
            return err  # not Ray's RayTaskError(DataError) twin, whose text holds the remote traceback
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
    return None


class HideUserErrors(logging.Filter):
    """Keeps Ray's console reports (and stack traces) of one of our errors off the screen: the stage
    prints it as one line. Ray logs them while handling the exception, so ``sys.exc_info`` holds it;
    its log files keep the full record."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return exc is None or find_user_error(exc) is None


@contextmanager
def user_errors_from_ray() -> Iterator[None]:
    """Re-raise a user error raised on a Ray worker as itself, not as Ray's wrapper."""
    try:
        yield
    except Exception as err:
        user = find_user_error(err)
        if user is None or user is err:
            raise
        raise type(user)(str(user).splitlines()[0]) from None  # Ray Data appends its retry advice
