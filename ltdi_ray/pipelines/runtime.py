"""Connecting to Ray (quietly, unless ``verbose``) and turning errors raised inside Ray back into
one-line user errors."""

from __future__ import annotations

import logging
import os
import socket
import sys
from contextlib import contextmanager
from typing import Iterator, Optional

from ltdi_ray.config.schema import RayConfig
from ltdi_ray.errors import ConfigError, LtdiError

log = logging.getLogger("ltdi_ray")
ENABLE_CLUSTERS = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ensure_ray(cfg: RayConfig, verbose: bool = False) -> None:
    """Connect once: ``ray.address``, else ``RAY_ADDRESS`` (set by ``ray job submit``), else a
    fresh local instance (``address="local"`` never attaches to a stale local cluster).

    Unless ``verbose``, Ray's own INFO chatter (per-report and checkpoint lines, execution plans, worker
    group set-up) stays in its log files, in the driver and every worker of the job; Ray Data's progress
    lines give way to the stages' own bars; warnings and errors still reach the console.
    """
    import ray
    import ray.data

    context = ray.data.DataContext.get_current()
    # a user error raised in a Ray Data task (a tampered file, a dead endpoint) reaches the driver as
    # itself: Ray Data's UserCodeException wrapper does not carry its cause back from the worker
    context.raise_original_map_exception = True
    context.enable_progress_bars = verbose  # quiet: the stages draw their own bars
    if not verbose:
        quiet_ray_data()
    for name in ("ray", "ray.data"):
        for handler in logging.getLogger(name).handlers:
            if handler.get_name() != "file" and not any(isinstance(f, HideUserErrors) for f in handler.filters):
                handler.addFilter(HideUserErrors())
    if ray.is_initialized():
        return
    quiet = {} if verbose else {"logging_config": ray.LoggingConfig(log_level="WARNING"),
                                "runtime_env": {"worker_process_setup_hook": "ltdi_ray.pipelines.runtime.quiet_worker"}}
    if not verbose:  # the local instance's token is made for this run: nothing to act on
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if cfg.address or os.environ.get("RAY_ADDRESS"):
        where = f"ray.address={cfg.address}" if cfg.address else f"RAY_ADDRESS={os.environ['RAY_ADDRESS']}"
        check_reachable(cfg.address or os.environ["RAY_ADDRESS"], where)
        try:
            ray.init(address=cfg.address, **quiet)  # None: Ray reads RAY_ADDRESS
        except (ConnectionError, RuntimeError, ValueError) as err:  # it answers, but it is no Ray head
            raise ConfigError(f"{where}: cannot join a Ray cluster there ({str(err).strip().splitlines()[0]})") from None
    else:
        with loopback_only():
            ray.init(address="local", num_cpus=cfg.num_cpus, **quiet)
    log.info("ray: %s", {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")})


@contextmanager
def loopback_only() -> Iterator[None]:
    """While a local instance starts, make it name itself 127.0.0.1, so that its services listen on
    loopback only: a machine's own run is no one else's business (a cluster others join is started
    with ``ray start --head`` and reached with ``ray.address``). Ray picks a reachable interface unless
    clusters are turned off, as on macOS and Windows (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``, read once at
    import, so the module's value is set too; the processes started meanwhile inherit it). Restored after,
    so that a later connection of this process to a real cluster names a reachable address."""
    from ray._private import ray_constants

    env, value = os.environ.get(ENABLE_CLUSTERS), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[ENABLE_CLUSTERS], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = value
        if env is None:
            os.environ.pop(ENABLE_CLUSTERS, None)
        else:
            os.environ[ENABLE_CLUSTERS] = env


def check_reachable(address: str, where: str, timeout_s: float = 5.0) -> None:
    """Fail at once, in one line, when nothing listens at a cluster address (Ray itself retries for
    minutes); ``auto`` and ``local`` are Ray's own to resolve."""
    if address in ("auto", "local"):
        return
    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{where}: expected host:port, ray://host:port, auto or local")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ConfigError(f"{where}: nothing answers there within {timeout_s:g} s ({err.strerror or err})") from None


def quiet_worker() -> None:
    """Every worker of a quiet job: Ray's deprecation warnings about its own internal calls (e.g. Train's
    data config setting ``ExecutionOptions.exclude_resources``) are not the user's to act on."""
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.")


class QuietRayData(logging.Filter):
    """Ray Data's console in a quiet run: warnings and errors, except that its progress bars are off."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and not record.getMessage().startswith("Progress bars")


def quiet_ray_data() -> None:
    """Put :class:`QuietRayData` on Ray Data's console handler in this process (idempotent)."""
    import ray.data  # noqa: F401 - configures its logger

    for handler in logging.getLogger("ray.data").handlers:
        if handler.get_name() == "console" and not any(isinstance(f, QuietRayData) for f in handler.filters):
            handler.addFilter(QuietRayData())


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
