"""Compose a validated :class:`Config` from the packaged ``conf/`` plus ``key=value`` overrides.

Hydra's compose API is used (not ``@hydra.main``) so that composing has no side effects:
no output directory, no chdir, and it can be called from tests and Ray workers alike. The
``task`` node's schema is the task family's own dataclass: ``task=NAME`` picks a packaged family,
``task.family=package.module:Class`` (or a registered name) any family, its schema registered here.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ltdi_ray.config.schema import Config
from ltdi_ray.errors import ConfigError
from ltdi_ray.tasks import BUILT_IN, family_class

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # package data: installed with the package
CUSTOM = "custom"  # the task group option whose schema is the family task.family names


def register_schemas(custom: str = "") -> None:
    """Register the root and the built-in families' schemas with Hydra's ConfigStore, and ``custom``'s
    (a ``task.family`` value) as ``task/custom_schema``."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for name in BUILT_IN:
        store.store(group="task", name=f"{name}_schema", node=family_class(name).Config)
    if custom:
        store.store(group="task", name=f"{CUSTOM}_schema", node=family_class(custom).Config)


def _route_family(overrides: List[str]) -> Tuple[List[str], str]:
    """``task.family=X`` selects ``task=custom`` with X's schema; returns the overrides and X ('' if none)."""
    values = {k: v.strip("'\"") for k, _, v in (o.partition("=") for o in overrides)}
    spec, group = values.get("task.family", ""), values.get("task")
    if not spec:
        if group == CUSTOM:
            raise ConfigError("task=custom needs task.family=package.module:Class (docs/extending.md)")
        return list(overrides), ""
    if group not in (None, CUSTOM) and family_class(group) is not family_class(spec):
        raise ConfigError(f"task={group} and task.family={spec} name different families; give one of them")
    return [o for o in overrides if o.partition("=")[0] != "task"] + [f"task={CUSTOM}"], spec


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
    return [p.stem for p in (CONF_DIR / group).glob("*.yaml")]


def compose_dict(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose the raw (unvalidated) config; raises :class:`ConfigError` on unknown keys or bad types."""
    overrides, custom = _route_family(list(overrides))
    register_schemas(custom)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_one_line(err)) from None


def to_config(cfg: DictConfig) -> Config:
    """Resolve interpolations and instantiate the dataclasses, running every invariant check."""
    try:
        return _finite(OmegaConf.to_object(cfg))
    except ConfigError:
        raise
    except OmegaConfBaseException as err:
        cause = err.__cause__ if isinstance(err.__cause__, ConfigError) else None
        if cause is not None:
            raise cause from None
        raise ConfigError(_one_line(err)) from None


def _finite(node, key: str = ""):
    """``node``, after refusing any inf or NaN among its numbers (no key of the schema means an infinity)."""
    if dataclasses.is_dataclass(node):
        for field in dataclasses.fields(node):
            _finite(getattr(node, field.name), f"{key}.{field.name}" if key else field.name)
    elif isinstance(node, dict):
        for name, value in node.items():
            _finite(value, f"{key}.{name}")
    elif isinstance(node, (list, tuple)):
        for value in node:
            _finite(value, key)
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"config key '{key}': must be a finite number, got {node}")
    return node


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


def config_changes(old: dict, new: dict, prefix: str = "") -> List[str]:
    """``"key: old -> new"`` for every leaf that differs between two nested config dicts."""
    keys = sorted(set(old) | set(new))
    out = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def file_overrides(path: str) -> List[str]:
    """``key=value`` overrides from a YAML file of nested config keys (e.g. the best config a
    sweep wrote); passed as ``config_file=PATH``, they apply before the command line's own. Its values are
    taken as written: an interpolation (``${oc.env:...}``) is refused, so no environment variable (a secret)
    is ever resolved into the configs that stages save beside the data."""
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except FileNotFoundError:
        raise ConfigError(f"config_file={path}: no such file") from None
    except Exception as err:
        raise ConfigError(f"config_file={path}: not a YAML mapping ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config_file={path}: not a YAML mapping of config keys")
    for key, value in dotted(data).items():
        _refuse_interpolation(value, f"config_file={path}: {key}")
    return [f"{k}={_value(v)}" for k, v in dotted(data).items()]


def _refuse_interpolation(value, where: str) -> None:
    if "${" in str(value):
        raise ConfigError(f"{where} holds an interpolation ({value!r}); write the value itself: configs are saved "
                          "beside the data, and an environment variable resolved into one would be saved with it")


def load_config(overrides: Sequence[str] = ()) -> Config:
    """Compose and validate: the single way every stage gets its config (``config_file=PATH``
    entries expand to that file's overrides, in place)."""
    expanded: List[str] = []
    for item in overrides:
        if "${oc.env" in item:
            _refuse_interpolation(item.split("=", 1)[-1], item.split("=", 1)[0])
        expanded += file_overrides(item.split("=", 1)[1]) if item.startswith("config_file=") else [item]
    return to_config(compose_dict(expanded))


def config_from_plain(data: dict) -> Config:
    """Rebuild a validated :class:`Config` from :func:`to_plain`'s dict (checkpoints, Ray workers)."""
    family = (data.get("task") or {}).get("family")
    if not isinstance(family, str):
        raise ConfigError(f"config has no task family (task.family is {family!r})")
    schema = family_class(family).Config
    try:
        base = OmegaConf.structured(Config)
        base.task = OmegaConf.structured(schema)
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
