"""Meta-training throughput on Ray Train for 1 and 2 workers, with all-reduce vs compute per step.

Collects a sinusoid dataset once (``--tasks``), then for each ``--metas`` x ``--workers`` runs
the train stage as a fresh run (``resume=false``) with ``--epochs`` epochs of ``--steps`` outer
steps, the machine's CPUs split evenly over the workers, and prints one JSON line with the last
epoch's tasks/s and the seconds per outer step spent computing and in the all-reduce (the train
stage's summary). Figures: docs/results/performance.md ("Meta-training throughput and scaling").

    python benchmarks/train_scaling.py [--workers 1 2] [--metas none reptile] [--overrides k=v ...]
"""

from __future__ import annotations

import argparse
import json
import os

import ltdi_ray


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="/tmp/ltdi_scaling")
    p.add_argument("--tasks", type=int, default=2000)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--metas", nargs="+", default=["none", "reptile"])
    p.add_argument("--epochs", type=int, default=2, help="the first epoch is warm-up; the last one is reported")
    p.add_argument("--steps", type=int, default=30, help="outer steps per epoch")
    p.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs shared by the workers")
    p.add_argument("--overrides", nargs="*", default=[])
    args = p.parse_args()
    base = [f"storage.uri={args.root}", f"collect.num_tasks={args.tasks}", "ray.num_cpus=" + str(2 * args.cpus),
            f"train.epochs={args.epochs}", f"train.steps_per_epoch={args.steps}", "resume=false", *args.overrides]
    ltdi_ray.run("collect", ltdi_ray.compose(*base))
    for meta in args.metas:
        for workers in args.workers:
            cfg = ltdi_ray.compose(*base, f"train.meta={meta}", f"train.num_workers={workers}",
                                   f"train.cpus_per_worker={max(1, args.cpus // workers)}")
            s = ltdi_ray.run("train", cfg)
            print(json.dumps({"meta": meta, "workers": workers, "cpus_per_worker": cfg.train.cpus_per_worker,
                              "meta_batch": cfg.train.meta_batch, "preset": cfg.model.preset,
                              "tasks_per_s": s["tasks_per_s"], "compute_s_per_step": s["compute_s_per_step"],
                              "allreduce_s_per_step": s["allreduce_s_per_step"], "seconds": s["seconds"]}), flush=True)


if __name__ == "__main__":
    main()
