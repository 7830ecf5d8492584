"""The evaluation protocol of the quality benchmarks (docs/results/protocol.md), as functions they share.

Development and final tasks are disjoint: every step size is chosen on validation episodes
(:func:`choose_step_sizes`), and the final table scores the test episodes of ``evaluate.seed`` once
(:func:`score`); learned methods are trained under several seeds, each in its own run directory that
shares one collected dataset (:func:`train_seed`), and compared with ``evaluation.stats.over_seeds``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
from typing import Dict, List

import ltdi_ray
from ltdi_ray.evaluation.ablations import ablation_location
from ltdi_ray.evaluation.methods import METHODS
from ltdi_ray.generator.checkpoint import META, read_meta
from ltdi_ray.storage.fs import Location
from ltdi_ray.tasks import family_class


def generator_validation(base: List[str], methods: List[str]) -> Dict[str, float]:
    """The last epoch's validation metric (``train.val_tasks`` validation tasks of ``collect.seed``) of every
    generator among ``methods`` that the run ``base`` composes to has trained: ``ltdi`` and the ablations.
    What a default among them is chosen by; the test tasks never are."""
    cfg = ltdi_ray.compose(*base)
    places = {"ltdi": Location.parse(cfg.storage.uri, cfg.storage.endpoint_url).child("generator")}
    places.update({m: ablation_location(cfg.storage, m) for m in methods if m != "ltdi"})  # none there: not one
    out = {}
    for name, where in places.items():
        if where.exists(META):
            out[name] = read_meta(where)["metrics"]["val_metric"]
    return out


def higher_is_better(base: List[str]) -> bool:
    """Whether the metric of the family ``base`` composes to is better when higher."""
    return family_class(ltdi_ray.compose(*base).task.family).higher_is_better


def seed_run(data_uri: str, run_uri: str) -> str:
    """A run directory for one seed holding the dataset collected under ``data_uri`` (hard links: no copy,
    and the training tasks are the same for every seed). Local paths only."""
    target = os.path.join(run_uri, "trajectories")
    if not os.path.exists(target):
        os.makedirs(run_uri, exist_ok=True)
        shutil.copytree(os.path.join(data_uri, "trajectories"), target, copy_function=os.link)
    return run_uri


def train_seed(common: List[str], top: str, seed: int) -> tuple:
    """The generator of seed ``seed`` trained in ``<top>/seed<seed>`` on the dataset of ``<top>/data`` (config
    overrides ``common``); returns the run directory and the overrides every later stage of that seed takes
    (``train.seed`` and ``evaluate.baseline.seed`` set to ``seed``; the meta-trained baselines kept and reused
    between the step-size choice and the final tables)."""
    run = seed_run(f"{top}/data", f"{top}/seed{seed}")
    base = [*common, f"storage.uri={run}", f"train.seed={seed}", f"evaluate.baseline.seed={seed}",
            "evaluate.baseline.reuse=true"]
    ltdi_ray.run("train", ltdi_ray.compose(*base))
    return run, base


def _run(base: List[str], methods: List[str], values: Dict[str, float], extra: List[str]) -> dict:
    overrides = [*base, *extra, f"evaluate.methods=[{','.join(methods)}]", *(f"{k}={v}" for k, v in values.items())]
    with contextlib.redirect_stdout(sys.stderr):  # the stage's table: the benchmarks' stdout is JSON lines
        summary = ltdi_ray.run("evaluate", ltdi_ray.compose(*overrides))
    with open(summary["uri"]) as fh:
        return json.load(fh)


def choose_step_sizes(base: List[str], methods: List[str], grid: List[float], tasks: int) -> Dict[str, dict]:
    """The SGD step size of every method in ``methods`` that has one (``Method.step_keys``), chosen on ``tasks``
    validation episodes from ``grid``: ``{method: {"lr": best, "val": {lr: mean}}}``."""
    stepped = [m for m in methods if METHODS[m].step_keys]
    if not stepped:  # nothing to choose; an evaluate call with no methods is a config error
        return {}
    scores: Dict[str, Dict[float, float]] = {m: {} for m in stepped}
    keys = sorted({k for m in stepped for k in METHODS[m].step_keys})
    for lr in grid:
        record = _run(base, stepped, {k: lr for k in keys}, ["evaluate.split=val", f"evaluate.num_tasks={tasks}"])
        for m in stepped:
            if m in record["methods"]:  # not skipped
                scores[m][lr] = record["methods"][m]["mean"]
    scores = {m: s for m, s in scores.items() if s}
    sign = 1.0 if higher_is_better(base) else -1.0
    rank = lambda s: lambda lr: sign * s[lr] if math.isfinite(s[lr]) else -math.inf  # noqa: E731  (diverged: worst)
    return {m: {"lr": max(s, key=rank(s)), "val": s} for m, s in scores.items()}


def score(base: List[str], methods: List[str], chosen: Dict[str, dict], extra: List[str] = (),
          diagnostics: List[str] = ()) -> dict:
    """Every method on the final tasks, each stepped one at its chosen step size; methods whose step-size keys
    agree run in one evaluate call, and ``diagnostics`` run in the call that scores ``ltdi``. Returns the merged
    results record (methods in ``methods``' order)."""
    groups: List[tuple] = []  # (key values, methods)
    for m in methods:
        values = {k: chosen[m]["lr"] for k in METHODS[m].step_keys} if m in chosen else {}
        for group_values, members in groups:
            if all(group_values.get(k, v) == v for k, v in values.items()):
                group_values.update(values)
                members.append(m)
                break
        else:
            groups.append((values, [m]))
    record: dict = {}
    for values, members in groups:
        asked = [f"evaluate.diagnostics=[{','.join(diagnostics)}]"] if "ltdi" in members and diagnostics else []
        part = _run(base, members, values, [*extra, *asked])
        merged = {k: {**record.get(k, {}), **part[k]} for k in ("methods", "settings", "per_task", "diagnostics")}
        record = {**part, **merged}
    order = [m for m in methods if m in record["methods"]]
    for key in ("methods", "per_task"):
        record[key] = {m: record[key][m] for m in order}
    return record
