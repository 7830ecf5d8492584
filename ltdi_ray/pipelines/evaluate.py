"""The evaluate stage: every method of DESIGN 2.6 on the same unseen tasks, one table.

Methods: ``init`` (the base net's initialisation), ``finetune`` (the collection optimiser from it on the support),
``maml`` / ``fomaml`` / ``reptile`` (meta-learned inits trained on the dataset's training tasks,
then ``evaluate.adapt_steps`` SGD steps), ``single_level`` and ``vanilla`` (generators trained
like the evaluated one but with ``train.meta=none``, resp. plain diffusion on theta_M:
``local_consistency`` with k = 1), ``ltdi`` (the generator, zero gradient steps) and
``ltdi_finetune`` (its weights, then the same SGD steps as MAML). Writes ``results.json`` beside
the generator and prints the table.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import replace
from typing import Callable, Dict, Tuple

import torch

from ltdi_ray.config.compose import config_from_plain, to_plain
from ltdi_ray.config.schema import Config
from ltdi_ray.errors import DataError
from ltdi_ray.generator.api import WeightGenerator, load_generator
from ltdi_ray.generator.build import support_of
from ltdi_ray.models.heads import prototype_head
from ltdi_ray.generator.checkpoint import read_meta
from ltdi_ray.meta.baselines import METHODS as META_INITS, MetaInitConfig, adapt
from ltdi_ray.pipelines.collect import inner_optimizer
from ltdi_ray.storage.fs import Location
from ltdi_ray.tasks import make_family
from ltdi_ray.trajectories import initial_theta, run_batched
from ltdi_ray.pipelines.backbone import ensure_backbone
from ltdi_ray.pipelines.start import meta_init, support_shots

log = logging.getLogger("ltdi_ray")
# vanilla diffusion: x0 prediction (the stable one) and the full stochastic DDPM chain, the sampler that
# makes best-of-n work for it (one DDIM jump scores better with a single sample: README "Quality")
ABLATIONS = {"single_level": {"train": {"meta": "none"}},
             "vanilla": {"diffusion": {"variant": "local_consistency", "segments": 1, "parameterization": "x0",
                                       "weighting": "x0", "sampler": "ddpm", "sample_steps": None},
                         "train": {"function_loss": None, "chain_loss": None}}}  # our terms need the bridge


_POOLS: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}  # the last training pools (see _training_pools)


def summarise(values: torch.Tensor, seconds: float) -> dict:
    """Mean, 95% CI half-width (normal approximation) and milliseconds per task."""
    v = values.double()
    ci = 1.96 * float(v.std(unbiased=True)) / math.sqrt(len(v))
    return {"mean": float(v.mean()), "ci95": ci, "ms_per_task": 1000.0 * seconds / len(v)}


def paired_differences(per_task: Dict[str, torch.Tensor], of: str = "ltdi") -> Dict[str, dict]:
    """``of``'s per-task metric minus every other method's on the same tasks: mean and 95% CI
    half-width of the paired difference (tighter than comparing two means' CIs, because the task's
    difficulty cancels). ``per_task``: name -> ``(n,)``."""
    if of not in per_task:
        return {}
    return {name: {k: summarise(per_task[of] - v, 0.0)[k] for k in ("mean", "ci95")}
            for name, v in per_task.items() if name != of}


def _timed(fn: Callable[[], torch.Tensor]) -> Tuple[torch.Tensor, float]:
    tic = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - tic


def ablation_config(gen_cfg: Config, method: str, epochs) -> Config:
    plain = to_plain(gen_cfg)
    for section, values in ABLATIONS[method].items():
        plain[section].update(values)
    if epochs is not None:
        plain["train"]["epochs"] = epochs
    return config_from_plain(plain)


def _ablation(cfg: Config, gen: WeightGenerator, method: str) -> WeightGenerator:
    """Train (or reuse) the generator of an ablation under ``<storage.uri>/ablations/<method>``."""
    from ltdi_ray.pipelines.train import run_train

    abl = ablation_config(gen.cfg, method, cfg.evaluate.ablation_epochs)
    abl.ray, abl.storage = cfg.ray, cfg.storage
    if all(to_plain(getattr(abl, k)) == to_plain(getattr(gen.cfg, k)) for k in ("diffusion", "model", "train")):
        return gen  # the evaluated generator already is this ablation (e.g. single_level when train.meta=none)
    name = f"ablations/{method}"
    where = Location.parse(cfg.storage.uri, cfg.storage.endpoint_url).child(name)
    try:
        done = read_meta(where)["config"] == to_plain(abl)
    except DataError:
        done = False
    if not done:
        log.info("evaluate: training the %s ablation", method)
        run_train(abl, name=name)
    return load_generator(str(where), cfg.storage.endpoint_url)


def _training_pools(cfg: Config, gen: WeightGenerator) -> Tuple[torch.Tensor, torch.Tensor]:
    """The pools ``(N, P, ...)`` of the dataset's training tasks: what the baselines meta-train on.

    The last one is kept: computing the network inputs (Omniglot heads: backbone features of every
    pool image) takes minutes, and a process that evaluates repeatedly (a benchmark's step-size
    selection) needs the same ones each time.
    """
    from ltdi_ray.pipelines.train import open_dataset

    ds = open_dataset(cfg)
    key = json.dumps([str(ds.loc), ds.num_tasks, to_plain(gen.cfg.task)], sort_keys=True)
    if key not in _POOLS:
        _POOLS.clear()
        rows = ds.load(["pool_x", "pool_y"])
        _POOLS[key] = gen.family.to_torch(rows["pool_x"]), gen.family.targets_to_torch(rows["pool_y"])
    return _POOLS[key]


def _baseline_config(cfg: Config, method: str) -> MetaInitConfig:
    b = cfg.evaluate.baseline
    inner = b.reptile_inner_steps if method == "reptile" else b.inner_steps
    return MetaInitConfig(method=method, meta_steps=b.meta_steps, meta_batch=b.meta_batch, inner_steps=inner,
                          inner_lr=b.inner_lr, outer_lr=b.outer_lr, seed=cfg.train.seed)


def _meta_init_task(threads: int, *args) -> Tuple[torch.Tensor, dict]:
    """:func:`~ltdi_ray.pipelines.start.meta_init` as a Ray task: torch's intra-op threads capped at the task's CPUs."""
    torch.set_num_threads(threads)
    theta, settings = meta_init(*args)
    return theta, {**settings, "threads": threads}


def _start_meta_inits(cfg: Config, gen: WeightGenerator, methods) -> Dict[str, "ray.ObjectRef"]:  # noqa: F821
    """Launch the baselines' meta-training as concurrent Ray tasks of ``evaluate.baseline.cpus`` CPUs each.

    They are independent, and one of them keeps a single core busy (batches of 25 small tasks), so
    running them side by side while the driver trains the ablations shortens the stage by the
    baselines' time on a two-core machine. Longest first (Reptile's inner loop is the longest), so
    the shorter ones fill the other cores. Returns method -> ref of ``(theta, settings)``.
    """
    import ray
    from ltdi_ray.pipelines.runtime import ensure_ray

    if not methods:
        return {}
    ensure_ray(cfg.ray)
    b = cfg.evaluate.baseline
    configs = {m: _baseline_config(cfg, m) for m in methods}
    cost = {m: c.meta_steps * (c.inner_steps + 1) * (2 if m == "maml" else 1) for m, c in configs.items()}
    classes = gen.family.pool_classes
    shots = support_shots(gen.family)
    pools = ray.put(_training_pools(cfg, gen))
    task = ray.remote(num_cpus=b.cpus)(_meta_init_task).options(name="ltdi_ray.meta_init")
    threads = max(1, int(b.cpus))
    base = initial_theta(gen.family, gen.cfg.trajectory.init_seed)
    return {m: task.remote(threads, gen.loss, base, pools, classes, shots, configs[m])
            for m in sorted(methods, key=lambda m: -cost[m])}


def _applies(method: str, gen: WeightGenerator, view) -> bool:
    """Whether ``method`` is defined for this generator and N (logged when skipped)."""
    why = None
    if method == "protonet" and getattr(gen.cfg.task, "generate", None) != "head":
        why = "needs a fixed feature extractor (task.generate=head)"
    elif view.ways != gen.ways and method in (*META_INITS, *ABLATIONS):
        why = f"trained for {gen.ways}-way episodes"
    if why:
        log.info("evaluate: skipping %s: %s", method, why)
    return why is None


def run_evaluate(cfg: Config) -> dict:
    """Score every method in ``evaluate.methods`` on ``evaluate.num_tasks`` unseen tasks.

    Returns ``{"stage", "uri" (results.json), "generator_uri", "tasks", "metric", "methods": {name:
    {"mean", "ci95", "ms_per_task"}}}``.
    """
    import ray
    from ltdi_ray.pipelines.runtime import user_errors_from_ray

    torch.manual_seed(cfg.train.seed)
    cfg = ensure_backbone(cfg)
    root = Location.parse(cfg.storage.uri, cfg.storage.endpoint_url)
    gen_loc = root.child("generator")
    gen = load_generator(str(gen_loc), cfg.storage.endpoint_url)
    e = cfg.evaluate
    view = gen.view(e.ways)
    fam = gen.family if view.ways == gen.ways else make_family(replace(gen.cfg.task, ways=view.ways),
                                                               cfg.storage.endpoint_url)
    episodes = fam.sample_many(e.split, range(e.num_tasks), cfg.collect.seed)
    raw_sx, sy = support_of(episodes, fam, raw=True)  # what generate_batch takes
    sx = fam.net_input(raw_sx)  # what the nets take (Omniglot heads: features, computed once)
    n = e.num_tasks
    # init, finetune and the meta-learned baselines start at the base net's own initialisation, whatever
    # theta_0 the generator's trajectories started at (trajectory.theta0=reptile: a meta-learned one)
    base = initial_theta(fam, gen.cfg.trajectory.init_seed)
    results: Dict[str, dict] = {}
    settings: Dict[str, dict] = {}
    per_task: Dict[str, torch.Tensor] = {}

    def score(name: str, make: Callable[[], torch.Tensor]) -> None:
        thetas, seconds = _timed(make)
        per_task[name] = gen.query_metric(thetas, episodes).double()
        results[name] = summarise(per_task[name], seconds)
        log.info("evaluate: %-14s %.4f +- %.4f (%.2f ms/task)", name, results[name]["mean"], results[name]["ci95"],
                 results[name]["ms_per_task"])

    sgd = lambda theta, lr: adapt(view.loss, theta, sx, sy, e.adapt_steps, lr)  # noqa: E731
    generate = lambda g: g.generate_batch(raw_sx, sy, e.num_samples, seed=cfg.train.seed)  # noqa: E731
    applied = [m for m in e.methods if _applies(m, gen, view)]
    meta_inits = _start_meta_inits(cfg, gen, [m for m in applied if m in META_INITS])
    for method in applied:
        if method == "init":
            score(method, lambda: base.expand(n, -1))
        elif method == "finetune":
            opt = inner_optimizer(gen.cfg)
            settings[method] = {"optimizer": opt.optimizer, "lr": opt.lr, "steps": opt.steps, "data": "support"}
            score(method, lambda: run_batched(view.loss, base.expand(n, -1), sx, sy,
                                              replace(opt, save_every=opt.steps))[:, -1])
        elif method in META_INITS:
            with user_errors_from_ray():
                theta, settings[method] = ray.get(meta_inits.pop(method))
            settings[method]["adapt"] = {"optimizer": "sgd", "lr": e.adapt_lr, "steps": e.adapt_steps}
            score(method, lambda: sgd(theta, e.adapt_lr))
        elif method == "protonet":
            settings[method] = {"features": gen.cfg.task.backbone, "rule": "nearest class mean, squared euclidean"}
            score(method, lambda: prototype_head(sx, sy, view.ways))
        elif method in ABLATIONS:
            abl = _ablation(cfg, gen, method)
            settings[method] = {k: to_plain(abl.cfg)[k] for k in ("diffusion", "train")}
            score(method, lambda: generate(abl))
        elif method == "ltdi":
            score(method, lambda: generate(gen))
        elif method == "ltdi_finetune":
            settings[method] = {"optimizer": "sgd", "lr": e.ltdi_adapt_lr, "steps": e.adapt_steps}
            score(method, lambda: sgd(generate(gen), e.ltdi_adapt_lr))
    metric = "mse" if fam.loss == "mse" else "accuracy"
    record = {"task": fam.name, "split": e.split, "tasks": n, "metric": metric, "shots": fam.fields()["support_idx"][0][0]
              // fam.pool_classes, "ways": view.ways,
              "generator_uri": str(gen_loc), "generator": {k: gen.meta["config"][k] for k in ("diffusion", "train")},
              "methods": results, "ltdi_minus": paired_differences(per_task), "settings": settings,
              "per_task": {k: v.tolist() for k, v in per_task.items()}}
    out = root.child("results.json")
    root.write_atomic("results.json", json.dumps(record, indent=1).encode())
    print(format_table(record), flush=True)
    return {"stage": "evaluate", "uri": str(out), "generator_uri": str(gen_loc), "tasks": n, "metric": metric,
            "methods": {k: {m: round(v, 4) for m, v in r.items()} for k, r in results.items()}}


def format_table(record: dict) -> str:
    """The results as a fixed-width text table."""
    ways = f"{record['ways']}-way " if record.get("ways") else ""
    head = f"{record['task']} {ways}{record['shots']}-shot, {record['tasks']} {record['split']} tasks, query {record['metric']}"
    lines = [head, f"{'method':<15}{'mean':>10}{'ci95':>10}{'ms/task':>10}"]
    for name, r in record["methods"].items():
        lines.append(f"{name:<15}{r['mean']:>10.4f}{r['ci95']:>10.4f}{r['ms_per_task']:>10.3f}")
    if record.get("ltdi_minus"):
        pairs = ", ".join(f"{name} {d['mean']:+.4f} +- {d['ci95']:.4f}" for name, d in record["ltdi_minus"].items())
        lines.append(f"ltdi minus, per task: {pairs}")
    for name, s in record["settings"].items():
        lines.append(f"  {name}: {json.dumps(s, sort_keys=True)}")
    return "\n".join(lines)
