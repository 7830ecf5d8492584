"""The tune stage: a Ray Tune sweep whose trials are training runs (Train v2's driver pattern).

Each trial is a function that composes its config (the base config plus the trial's sampled
keys, validated like any other), reads the dataset shards and runs a ``TorchTrainer``; Train's
``TuneReportCallback`` forwards every epoch's validation metric to Tune, where ASHA stops weak
trials early. Results, trial runs and the experiment state live under
``<storage.uri>/tune/<tune.name>``; re-running the same command resumes an interrupted sweep.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import time
from typing import Any, Dict

from ltdi_ray.config.compose import config_from_plain, set_dotted, to_plain
from ltdi_ray.config.schema import FAMILY_DEFAULTS, Config
from ltdi_ray.config.sweep import flatten_space
from ltdi_ray.errors import ConfigError, DataError
from ltdi_ray.pipelines.prepare import prepare
from ltdi_ray.pipelines.train import (
    ensure_workers_placeable,
    make_trainer,
    open_dataset,
    prepare_training,
    storage_path,
)
from ltdi_ray.storage.fs import Location
from ltdi_ray.storage.lease import writer_lease
from ltdi_ray.tasks import family_class

log = logging.getLogger("ltdi_ray")
METRIC = "val_metric"
TRIAL_RESOURCES = {"memory": 512 * 2**20}  # what a trial's own process (its Train run's driver) holds
MAX_CHECKED = 256  # combinations of swept values composed before a sweep starts (about 40 ms each)


def trial_config(base: dict, params: Dict[str, Any]) -> Config:
    """The validated config of a trial: ``base`` (plain) with the dotted ``params`` set."""
    plain = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(plain, key, value)
    return config_from_plain(plain)


def run_trial(config: dict, base: dict) -> None:
    """Tune's trainable: one training run of ``base`` with the trial's ``params``, reporting each
    epoch to Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = trial_config(base, config["params"])
    trial = ray.tune.get_context().get_trial_id()
    # the driver checked the base config; a trial may sweep the worker count or size
    root, loop_config, datasets = prepare_training(
        cfg, f"tune trial {trial} (train.num_workers={cfg.train.num_workers})", TRIAL_RESOURCES)
    sweep = root.child("tune", cfg.tune.name, "runs")
    make_trainer(cfg, loop_config, datasets, f"trial-{trial}", sweep, callbacks=[TuneReportCallback()]).fit()


def _sampler(kind: str, arg: list):
    from ray import tune

    return {"grid": tune.grid_search, "choice": tune.choice}[kind](arg) if kind in ("grid", "choice") else \
        {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[kind](*arg)


def sweep_base(cfg: Config) -> dict:
    """The plain config every trial starts from: the keys the task family filled (``FAMILY_DEFAULTS``) are
    null again, so a trial gets the defaults of its own values (k follows a swept variant, the bridge noise
    a swept start). A key set to exactly its default is treated alike: it follows the trial too."""
    plain = to_plain(cfg)
    for key in FAMILY_DEFAULTS:
        trial = copy.deepcopy(plain)
        set_dotted(trial, key, None)
        section, name = key.split(".")
        try:
            filled = getattr(getattr(config_from_plain(trial), section), name)
        except ConfigError:  # its default does not fit the rest of the config: it was set
            continue
        if filled == plain[section][name]:
            plain = trial
    return plain


def _checked_values(kind: str, arg: list) -> list:
    return list(arg) if kind in ("grid", "choice") else list(arg[:2])  # a range: its two ends


def check_space(cfg: Config) -> Dict[str, Any]:
    """Every combination of the listed values (a range: its ends) must make a valid config, checked here,
    not in a failed trial; past ``MAX_CHECKED`` combinations, each key's values with the other keys at
    their first value."""
    space = flatten_space(cfg.tune.space)
    if not space:
        raise ConfigError("tune.space is empty: name at least one key to sweep (see conf/tune/default.yaml)")
    base = sweep_base(cfg)
    values = {key: _checked_values(kind, arg) for key, kind, arg in space}
    for key in values:
        try:
            trial_config(base, {key: values[key][0]})
        except (KeyError, TypeError):
            raise ConfigError(f"tune.space.{key}: {key} is not a config key") from None
        except ConfigError:
            pass  # judged with the other keys' values below
    if math.prod(len(v) for v in values.values()) <= MAX_CHECKED:
        combos = [dict(zip(values, combo)) for combo in itertools.product(*values.values())]
    else:
        first = {key: v[0] for key, v in values.items()}
        combos = [{**first, key: value} for key, v in values.items() for value in v]
    for params in combos:
        try:
            trial_config(base, params)
        except ConfigError as err:
            named = ", ".join(f"{k}={v!r}" for k, v in params.items())
            raise ConfigError(f"tune.space.{named}: {err}") from None
    return {key: _sampler(kind, arg) for key, kind, arg in space}


def max_concurrent(cfg: Config) -> int:
    """Trials that fit the cluster's CPUs (one left for Ray Data) and GPUs at once."""
    import ray

    if cfg.tune.max_concurrent_trials:
        return cfg.tune.max_concurrent_trials
    t, free = cfg.train, ray.available_resources()
    fits = int(max(0.0, free.get("CPU", 0) - 1) // (t.num_workers * t.cpus_per_worker))
    if t.use_gpu:
        fits = min(fits, int(free.get("GPU", 0) // t.num_workers))
    return max(1, fits)


CREDENTIALS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"}


def keep_credentials_out_of_trial_envs() -> None:
    """Tune copies these variables from the driver's environment into every trial's runtime env, and Ray's
    runtime-env agent writes runtime envs to its log file in clear text (Ray 2.60,
    ``ray.tune.execution.class_cache``; docs/ray-notes.md 12). Trials then take credentials as every other
    worker of the stages does: from their node's environment or cloud identity."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = class_cache.ENV_VARS_TO_PROPAGATE - CREDENTIALS


def run_tune(cfg: Config) -> dict:
    """Sweep ``tune.space`` with ASHA on the validation metric; write the table, plots and best config.

    Returns ``{"stage", "uri", "trials", "best_metric", "best_config", "best_params", "table", "plots", "seconds"}``.
    """
    tic = time.time()
    cfg = prepare(cfg)
    params = check_space(cfg)
    root = Location.parse(cfg.storage.uri, cfg.storage.endpoint_url)
    root.check_reachable()
    open_dataset(cfg)  # fail here, not in every trial, when the dataset is missing or was collected otherwise
    with writer_lease(root, f"tune/{cfg.tune.name}", "tune", cfg.storage.lease_ttl_s):
        return _sweep(cfg, root, params, tic)


def _sweep(cfg: Config, root: Location, params: dict, tic: float) -> dict:
    """The body of :func:`run_tune`, run by the holder of the sweep's write lease."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from ltdi_ray.pipelines.runtime import ensure_ray, user_errors_from_ray
    from ltdi_ray.pipelines.tune_report import write_report

    mode = "max" if family_class(cfg.task.family).higher_is_better else "min"
    ensure_ray(cfg.ray, cfg.verbose)
    keep_credentials_out_of_trial_envs()
    sweep_root = root.child("tune")
    # a trial only drives its Train run: it holds memory for that, and no CPU, so that a worker asking for
    # every CPU of a node (the default on two CPUs) still fits beside it
    trainable = tune.with_resources(tune.with_parameters(run_trial, base=sweep_base(cfg)), TRIAL_RESOURCES)
    ensure_workers_placeable(cfg, f"each tune trial (train.num_workers={cfg.train.num_workers})", TRIAL_RESOURCES)
    path = storage_path(sweep_root.child(cfg.tune.name))
    if tune.Tuner.can_restore(path):
        log.info("tune: resuming the sweep at %s", sweep_root.child(cfg.tune.name))
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space={"params": params},
            tune_config=tune.TuneConfig(
                metric=METRIC, mode=mode, num_samples=cfg.tune.num_samples,
                max_concurrent_trials=max_concurrent(cfg),
                scheduler=ASHAScheduler(time_attr="training_iteration", max_t=cfg.train.epochs,
                                        grace_period=min(cfg.tune.grace_period, cfg.train.epochs),
                                        reduction_factor=cfg.tune.reduction_factor)),
            # Tune's status line (trials running, pending, done) is the sweep's progress; verbose adds results
            run_config=tune.RunConfig(name=cfg.tune.name, storage_path=storage_path(sweep_root),
                                      verbose=2 if cfg.verbose else 1,
                                      failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures)))
    with user_errors_from_ray():
        results = tuner.fit()
    expected = cfg.tune.num_samples * math.prod(len(a) for _, kind, a in flatten_space(cfg.tune.space) if kind == "grid")
    if len(results) < expected or results.num_terminated + results.num_errors < len(results):
        raise KeyboardInterrupt  # Ctrl-C: Tune saved the sweep's state and stopped; the CLI says how to resume
    report = write_report(results, sweep_root.child(cfg.tune.name), METRIC, mode)
    if report["best"] is None:
        raise DataError(f"no trial of the sweep at {sweep_root.child(cfg.tune.name)} reported {METRIC}; "
                        f"first error: {report['first_error']}")
    return {"stage": "tune", "uri": str(sweep_root.child(cfg.tune.name)), "trials": report["trials"],
            "best_metric": report["best"][METRIC], "best_config": report["best_config"],
            "best_params": report["best"]["params"], "table": report["table"], "plots": report["plots"],
            "seconds": round(time.time() - tic, 2)}
