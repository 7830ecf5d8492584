"""Collection throughput: per-task loop vs batched kernel vs the whole Ray Data pipeline.

Prints one JSON line: ``per_task_tasks_per_s``, ``batched_tasks_per_s``, ``pipeline_tasks_per_s``
and their ratios, for sinusoid 5-shot with the default trajectory (Adam, 100 steps, 100-point
pool, checkpoint every 10 steps). The pipeline figure includes the actors' start, the Parquet
write and the manifest, but not ``ray.init``. The kernels start every trajectory at the same theta_0,
computed once before any timing; the collect stage computes its own before its first trajectory, so
under ``trajectory.theta0=reptile`` (sinusoid's default) the pipeline figure includes that Reptile
meta-training: pass ``--overrides trajectory.theta0=shared`` to time the collection alone. Figures:
docs/results/performance.md ("Collection throughput").

    python benchmarks/collect_throughput.py [--tasks 10000] [--device cuda] [--overrides k=v ...]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch


def per_task_rate(cfg, n: int, threads: int, stored: torch.Tensor) -> float:
    from ltdi_ray.pipelines.collect import make_batcher
    from ltdi_ray.trajectories.inner import run_per_task

    torch.set_num_threads(threads)
    b = make_batcher(cfg, shared=stored)
    start = time.perf_counter()
    for i in range(n):  # what a user loop does per task: sample, train with torch.optim, evaluate
        ep = b.family.sample(cfg.collect.split, i, cfg.collect.seed)
        x, y = b.family.to_torch(ep["pool_x"]), b.family.targets_to_torch(ep["pool_y"])
        ckpts = run_per_task(b.loss, b.theta0.shared, x, y, b.opt)
        qx, qy = b.family.to_torch(ep["query_x"]), b.family.targets_to_torch(ep["query_y"])
        with torch.no_grad():
            [float(b.loss(c, qx, qy)) for c in ckpts]
    return n / (time.perf_counter() - start)


def batched_rate(cfg, n: int, device: str, stored: torch.Tensor) -> float:
    from ltdi_ray.pipelines.collect import make_batcher

    torch.set_num_threads(os.cpu_count() or 1)
    b = make_batcher(cfg, device, stored)
    bs = cfg.collect.batch_size
    b(np.arange(bs))  # warm-up (allocator, CUDA context)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for lo in range(0, n, bs):
        b(np.arange(lo, min(lo + bs, n)))
    return n / (time.perf_counter() - start)


def pipeline_rate(overrides, n: int, gpus: float) -> dict:
    import ltdi_ray
    from ltdi_ray.pipelines.runtime import ensure_ray

    with tempfile.TemporaryDirectory() as tmp:
        cfg = ltdi_ray.compose(*overrides, f"collect.num_tasks={n}", f"storage.uri={tmp}",
                               f"collect.gpus_per_actor={gpus}")
        ensure_ray(cfg.ray)  # not measured: the stage attaches to it
        start = time.perf_counter()
        summary = ltdi_ray.run("collect", cfg)
        seconds = time.perf_counter() - start
    return {"tasks_per_s": n / seconds, "files": summary["files"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10000, help="tasks for the batched and pipeline runs (the default collect.num_tasks)")
    parser.add_argument("--per-task-tasks", type=int, default=40)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--overrides", nargs="*", default=[], help="config overrides, e.g. collect.batch_size=1024")
    parser.add_argument("--no-pipeline", action="store_true", help="kernel figures only (no Ray on this machine)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

    import ltdi_ray
    from ltdi_ray.pipelines.collect import make_batcher

    cfg = ltdi_ray.compose(*args.overrides)
    first = make_batcher(cfg)
    stored = first.theta0.shared  # computed once (reptile: meta-trained here), shared by the kernels
    per_task = max(per_task_rate(cfg, args.per_task_tasks, t, stored) for t in sorted({1, os.cpu_count() or 1}))
    batched = batched_rate(cfg, args.tasks, args.device, stored)
    pipeline = ({"tasks_per_s": float("nan"), "files": 0} if args.no_pipeline
                else pipeline_rate(args.overrides, args.tasks, 1.0 if args.device == "cuda" else 0.0))
    print(json.dumps({
        "benchmark": "collect_throughput", "family": cfg.task.family, "shots": cfg.task.shots,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{os.cpu_count()}",
        "steps": cfg.trajectory.steps, "pool_size": first.family.fields()["pool_x"][0][0], "batch_size": cfg.collect.batch_size,
        "tasks": args.tasks,
        "per_task_tasks_per_s": round(per_task, 1), "batched_tasks_per_s": round(batched, 1),
        "pipeline_tasks_per_s": round(pipeline["tasks_per_s"], 1),
        "batched_over_per_task": round(batched / per_task, 2),
        "pipeline_over_batched": round(pipeline["tasks_per_s"] / batched, 3),
        "files": pipeline["files"],
    }))


if __name__ == "__main__":
    main()
