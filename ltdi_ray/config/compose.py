"""Compose a validated :class:`Config` from ``conf/`` plus ``key=value`` overrides.

Hydra's compose API is used (not ``@hydra.main``) so that composing has no side effects:
no output directory, no chdir, and it can be called from tests and Ray workers alike.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, List, Sequence

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ltdi_ray.config.schema import TASK_SCHEMAS, Config
from ltdi_ray.errors import ConfigError

_REGISTERED = False


def conf_dir() -> Path:
    """The ``conf/`` directory: ``$LTDI_CONF_DIR`` or the one beside the package source."""
    path = Path(os.environ.get("LTDI_CONF_DIR") or Path(__file__).resolve().parents[2] / "conf")
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"config directory {path} has no config.yaml; install the project with "
                          "`pip install -e .` from its checkout or set LTDI_CONF_DIR")
    return path


def register_schemas() -> None:
    """Register the dataclass schemas with Hydra's ConfigStore (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for family, schema in TASK_SCHEMAS.items():
        store.store(group="task", name=f"{family}_schema", node=schema)
    _REGISTERED = True


def _one_line(err: BaseException) -> str:
    """Hydra/OmegaConf messages span many lines; reduce them to one that names the key."""
    text = str(err.__cause__ or err) if isinstance(err.__cause__, OmegaConfBaseException) else str(err)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    head = lines[0] if lines else type(err).__name__
    key = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("full_key:")), "")
    if "missing mandatory value" in head:
        return f"config key '{key}' is required; set it on the command line as {key}=..."
    if head.startswith("Key ") and " not in " in head:
        return f"unknown config key '{key}'"
    missing = re.match(r"In '.*': Could not find '(\w+)/(.+)'", head)
    if missing:
        group, option = missing.groups()
        choices = sorted(ln for ln in lines if not ln.endswith("_schema") and ln in _group_options(group))
        return f"config group '{group}' has no option '{option}' (choices: {', '.join(choices)})"
    return f"config key '{key}': {head}" if key and key not in head else head


def _group_options(group: str) -> List[str]:
    return [p.stem for p in (conf_dir() / group).glob("*.yaml")]


def compose_dict(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose the raw (unvalidated) config; raises :class:`ConfigError` on unknown keys or bad types."""
    register_schemas()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_one_line(err)) from None


def to_config(cfg: DictConfig) -> Config:
    """Resolve interpolations and instantiate the dataclasses, running every invariant check."""
    try:
        return OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except OmegaConfBaseException as err:
        cause = err.__cause__ if isinstance(err.__cause__, ConfigError) else None
        if cause is not None:
            raise cause from None
        raise ConfigError(_one_line(err)) from None


def _value(v) -> str:
    """A value in Hydra's override grammar."""
    if isinstance(v, bool) or v is None:
        return {True: "true", False: "false", None: "null"}[v]
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    if isinstance(v, str):
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return repr(v)


def dotted(nested: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: Dict[str, Any] = {}
    for k, v in nested.items():
        out.update(dotted(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def set_dotted(nested: Dict[str, Any], key: str, value: Any) -> None:
    """Set ``nested["a"]["b"] = value`` for ``key = "a.b"``, creating missing levels."""
    *parents, leaf = key.split(".")
    for p in parents:
        nested = nested.setdefault(p, {})
    nested[leaf] = value


def file_overrides(path: str) -> List[str]:
    """``key=value`` overrides from a YAML file of nested config keys (e.g. the best config a
    sweep wrote); passed as ``config_file=PATH``, they apply before the command line's own."""
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except FileNotFoundError:
        raise ConfigError(f"config_file={path}: no such file") from None
    except Exception as err:
        raise ConfigError(f"config_file={path}: not a YAML mapping ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config_file={path}: not a YAML mapping of config keys")
    return [f"{k}={_value(v)}" for k, v in dotted(data).items()]


def load_config(overrides: Sequence[str] = ()) -> Config:
    """Compose and validate: the single way every stage gets its config (``config_file=PATH``
    entries expand to that file's overrides, in place)."""
    expanded: List[str] = []
    for item in overrides:
        expanded += file_overrides(item.split("=", 1)[1]) if item.startswith("config_file=") else [item]
    return to_config(compose_dict(expanded))


def config_from_plain(data: dict) -> Config:
    """Rebuild a validated :class:`Config` from :func:`to_plain`'s dict (checkpoints, Ray workers)."""
    register_schemas()
    family = (data.get("task") or {}).get("family")
    if family not in TASK_SCHEMAS:
        raise ConfigError(f"config has unknown task family {family!r} (known: {', '.join(TASK_SCHEMAS)})")
    try:
        base = OmegaConf.structured(Config)
        base.task = OmegaConf.structured(TASK_SCHEMAS[family])
        return to_config(OmegaConf.merge(base, data))
    except OmegaConfBaseException as err:
        raise ConfigError(_one_line(err)) from None


def to_plain(cfg: Config) -> dict:
    """A JSON/YAML-safe nested dict of a validated config."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def overrides_from_argv(argv: List[str]) -> List[str]:
    """Check that every CLI argument looks like ``key=value`` (Hydra's override grammar); a bare
    first argument that is a path is the run root, ``storage.uri`` (``python -m ltdi_ray plot ./ltdi_runs/sinusoid``)."""
    if argv and "=" not in argv[0] and "/" in argv[0]:
        argv = [f"storage.uri={argv[0]}", *argv[1:]]
    for arg in argv:
        if "=" not in arg:
            raise ConfigError(f"argument {arg!r} is not an override; expected key=value (e.g. collect.num_tasks=100)")
    return list(argv)
