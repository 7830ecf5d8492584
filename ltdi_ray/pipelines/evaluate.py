"""The evaluate stage: the requested methods of ``ltdi_ray/evaluation/methods.py`` on the same unseen
tasks, then the report (``evaluation/report.py``): ``results.json`` beside the generator and the table.

The scored tasks are ids ``0..evaluate.num_tasks-1`` of ``(evaluate.split, evaluate.seed)``, drawn
independently of the training tasks (``collect.seed``); the generator's own training split is refused
(docs/results/protocol.md).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Dict

import torch

from ltdi_ray.config.checks import check_memory
from ltdi_ray.config.compose import config_changes, to_plain
from ltdi_ray.config.schema import Config
from ltdi_ray.errors import ConfigError
from ltdi_ray.evaluation.background import finish
from ltdi_ray.evaluation.diagnostics import DIAGNOSTICS
from ltdi_ray.evaluation.methods import METHODS, Evaluation, Predictions
from ltdi_ray.evaluation.report import format_table, make_record
from ltdi_ray.generator.api import load_generator
from ltdi_ray.pipelines.prepare import prepare
from ltdi_ray.progress import progress
from ltdi_ray.storage.fs import Location
from ltdi_ray.storage.lease import Lease, writer_lease
from ltdi_ray.tasks.episodes import support_of

log = logging.getLogger("ltdi_ray")


def evaluation_of(cfg: Config) -> Evaluation:
    """The run's published generator and its ``evaluate.num_tasks`` test episodes (``cfg`` prepared); refuses
    the split the generator was trained on."""
    where = Location.parse(cfg.storage.uri, cfg.storage.endpoint_url).child("generator")
    gen = load_generator(str(where), cfg.storage.endpoint_url)
    e, trained = cfg.evaluate, gen.cfg.collect
    if e.split == trained.split:
        raise ConfigError(f"evaluate.split={e.split}: the generator at {where} was trained on {trained.split} tasks "
                          f"(collect.seed={trained.seed}); score tasks it never saw (evaluate.split=val or test)")
    ignored = config_changes(to_plain(gen.cfg.task), to_plain(cfg.task), "task.")
    if ignored:  # the tasks a generator scores are the ones it was trained for; test-time changes: evaluate.task
        log.warning("evaluate: the generator's task config is used, not this command's (%s); change test episodes "
                    "with evaluate.task.<key>", "; ".join(ignored[:3]))
    view = gen.view(e.ways)
    check_memory(e.num_tasks * view.spec.dim * 4 * (len(e.methods) + 2), "evaluate.num_tasks",
                 f"the weights of {len(e.methods)} methods on {e.num_tasks} tasks")
    tasks = view.family.for_evaluation(dict(e.task))
    episodes = tasks.sample_many(e.split, range(e.num_tasks), e.seed)
    raw_sx, sy = support_of(episodes, view.family, raw=True)  # what generate_batch takes
    sx = view.family.net_input(raw_sx)  # what the nets take (Omniglot heads: features, computed once)
    return Evaluation(cfg, gen, view, episodes, raw_sx, sx, sy, tasks=tasks)


def score(ev: Evaluation, out) -> torch.Tensor:
    """Per-task metric ``(n,)`` of a method's weights ``(n, D)`` or :class:`Predictions` on the query sets."""
    if isinstance(out, Predictions):
        qy = ev.view.family.targets_to_torch(ev.episodes["query_y"])
        return torch.vmap(ev.view.family.metric)(out.values, qy)
    return ev.gen.query_metric(out, ev.episodes)


def run_evaluate(cfg: Config) -> dict:
    """Score every method in ``evaluate.methods`` on ``evaluate.num_tasks`` unseen tasks.

    Returns ``{"stage", "uri" (results.json), "generator_uri", "tasks", "metric", "methods": {name:
    {"mean", "ci95", "ms_per_task"}}}``.
    """
    torch.manual_seed(cfg.train.seed)
    cfg = prepare(cfg)
    root = Location.parse(cfg.storage.uri, cfg.storage.endpoint_url)
    ev = evaluation_of(cfg)  # reads only: a missing or mismatched generator fails before the lease is taken
    with writer_lease(root, "results", "evaluate", cfg.storage.lease_ttl_s) as lease:
        return _evaluate(cfg, root, ev, lease)


def _evaluate(cfg: Config, root: Location, ev: Evaluation, lease: Lease) -> dict:
    """The body of :func:`run_evaluate`, run by the holder of the results' write lease."""
    gen_loc = root.child("generator")
    gen, family, e = ev.gen, ev.view.family, cfg.evaluate
    chosen = []
    for name in e.methods:
        why = METHODS[name].skip(ev)
        if why:
            log.info("evaluate: skipping %s: %s", name, why)
        else:
            chosen.append(name)
    pending = {name: METHODS[name].launch(ev)
               for name in sorted((m for m in chosen if METHODS[m].launch), key=lambda m: -METHODS[m].cost(ev))}
    per_task: Dict[str, torch.Tensor] = {}
    weights: Dict[str, torch.Tensor] = {}
    seconds: Dict[str, float] = {}
    with progress(total=len(chosen), desc="evaluate", unit="method") as bar:
        for name in chosen:
            if name in pending:  # what it trains is not part of its time
                ev.ready[name] = finish(pending.pop(name))
            elif METHODS[name].prepare:
                ev.ready[name] = METHODS[name].prepare(ev)
            tic = time.perf_counter()
            out = METHODS[name].run(ev)
            seconds[name] = time.perf_counter() - tic
            per_task[name] = score(ev, out).double()
            if not isinstance(out, Predictions):
                weights[name] = out
            log.info("evaluate: %-14s %.4f (%.2f ms/task)", name, float(per_task[name].mean()),
                     1000.0 * seconds[name] / e.num_tasks)
            bar.update(1)
    trained = gen.cfg.collect
    header = {"task": family.name, "split": e.split, "seed": e.seed, "task_ids": [0, e.num_tasks],
              "tasks": e.num_tasks, "task_changes": dict(e.task), "metric": family.metric_name,
              "shots": family.shots, "ways": getattr(family.cfg, "ways", None), "generator_uri": str(gen_loc),
              "trained_on": {"split": trained.split, "seed": trained.seed, "tasks": trained.num_tasks},
              "seeds": {"train": gen.cfg.train.seed, "baseline": e.baseline.seed},
              "generator": {k: gen.meta["config"][k] for k in ("diffusion", "train")}}
    record = make_record(header, per_task, seconds, ev.settings)
    record["diagnostics"] = {name: DIAGNOSTICS[name](ev, weights) for name in e.diagnostics}
    lease.check()
    root.write_atomic("results.json", json.dumps(record, indent=1).encode())
    print(format_table(record), flush=True)
    return {"stage": "evaluate", "uri": str(root.child("results.json")), "generator_uri": str(gen_loc),
            "tasks": e.num_tasks, "metric": family.metric_name,
            "methods": {k: {m: round(v, 4) for m, v in r.items()} for k, r in record["methods"].items()}}
