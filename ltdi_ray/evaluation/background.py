"""The meta-learned baselines' training as concurrent Ray tasks, started before the methods run.

They are independent, and one of them keeps a single core busy (batches of 25 small tasks), so
running them side by side, and beside the methods that come before them, shortens the stage on a
two-core machine; the evaluate stage launches them longest first (Reptile's inner loop is the
longest), so the shorter ones fill the other cores.
"""

from __future__ import annotations

import json
from typing import Dict, Optional, Tuple

import torch

from ltdi_ray.config.compose import to_plain
from ltdi_ray.evaluation import stored_baselines
from ltdi_ray.meta.meta_init import meta_train_on_pools
from ltdi_ray.progress import watched

_POOLS: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}  # the last training pools (see training_pools)


def training_pools(cfg, gen) -> Tuple[torch.Tensor, torch.Tensor]:
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


def _meta_init_task(threads: int, show: bool, name: str, rule: str, pool_query: bool, loss, theta0, pools,
                    classes: int, shots: int, settings, keep: Optional[tuple]) -> Tuple[torch.Tensor, dict]:
    """:func:`meta_train_on_pools` as a Ray task, torch's intra-op threads capped at the task's CPUs, its
    progress drawn on the driver (``show``); ``keep``: where and under which inputs to keep the result
    (``stored_baselines``), or None."""
    from ltdi_ray.progress import RemoteBar

    torch.set_num_threads(threads)
    bar = RemoteBar(show, settings.meta_steps, name)
    theta, record = meta_train_on_pools(loss, theta0, pools, classes, shots, rule, settings, on_step=bar.update,
                                        pool_query=pool_query)
    bar.close()
    record = {**record, "threads": threads}
    if keep is not None:
        stored_baselines.write(*keep, theta, record)
    return theta, record


def launch_meta_init(ev, name: str, rule: str, pool_query: bool):
    """Start meta-training baseline ``name`` (meta-learning ``rule``; ``pool_query``: its outer loss on the
    whole pool minus the support) on the dataset's training pools as a Ray task of
    ``evaluate.baseline.cpus`` CPUs; returns its ref of ``(theta (D,), settings)``. With
    ``evaluate.baseline.reuse``, a kept result of the same inputs is that ref, and a new one is kept."""
    import ray

    from ltdi_ray.pipelines.placement import ensure_placeable
    from ltdi_ray.pipelines.runtime import ensure_ray

    ensure_ray(ev.cfg.ray, ev.cfg.verbose)
    b = ev.cfg.evaluate.baseline
    keep = stored_baselines.entry(ev, name, rule, pool_query) if b.reuse else None
    kept = keep and stored_baselines.read(*keep, dim=ev.base.numel())
    if kept:
        return ray.put(kept)
    if "pools" not in ev.shared:  # one copy in the object store for every baseline
        ev.shared["pools"] = ray.put(training_pools(ev.cfg, ev.gen))
    ensure_placeable([{"CPU": b.cpus}], f"evaluate's baseline {name}", "lower evaluate.baseline.cpus",
                     ev.cfg.ray.placement_timeout_s)
    family = ev.gen.family
    task = ray.remote(num_cpus=b.cpus)(_meta_init_task).options(name="ltdi_ray.meta_init")
    return task.remote(max(1, int(b.cpus)), watched(), name, rule, pool_query, ev.gen.view().loss, ev.base,
                       ev.shared["pools"], family.pool_classes, family.shots, b, keep)


def finish(ref) -> Tuple[torch.Tensor, dict]:
    """Wait for work a method launched; a user error raised in it comes back as itself."""
    import ray

    from ltdi_ray.pipelines.runtime import user_errors_from_ray

    with user_errors_from_ray():
        return ray.get(ref)
