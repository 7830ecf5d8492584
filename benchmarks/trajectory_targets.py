"""What the collect stage's trajectories look like as targets, for a config: in-process, no Ray.

Collects ``--tasks`` training tasks with the collect stage's batched inner loop (``trajectory.theta0=
reptile`` meta-trains its start first, as collect does) and prints one JSON line: the mean and median
query metric at every saved checkpoint, how far theta_M is from theta_0 (mean L2 norm) and how spread
the endpoints are (L2 norm of their per-coordinate standard deviation). ``--split val`` runs the
trajectories on validation tasks (the start is still meta-trained on training tasks). Figures:
docs/results/method-choices.md ("Where the trajectories start").

    python benchmarks/trajectory_targets.py --overrides trajectory.theta0=shared
    python benchmarks/trajectory_targets.py --overrides trajectory.theta0=reptile task.shots=10
    python benchmarks/trajectory_targets.py --split val --overrides reptile_start.meta_batch=250 reptile_start.meta_steps=2000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import ltdi_ray
from ltdi_ray.pipelines.collect import make_batcher
from ltdi_ray.trajectories.inner import evaluate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--split", default=None, help="tasks of this split (default: collect.split, the start's own)")
    p.add_argument("--overrides", nargs="*", default=[])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ltdi_ray.compose(*args.overrides)
    tic = time.time()
    batcher = make_batcher(cfg)
    start_s = time.time() - tic
    if args.split:  # the same start, tasks it never saw
        batcher = make_batcher(ltdi_ray.compose(*args.overrides, f"collect.split={args.split}"), shared=batcher.theta0.shared)
    rows = batcher(np.arange(args.tasks))
    fam = batcher.family
    qx, qy = fam.to_torch(rows["query_x"]), fam.targets_to_torch(rows["query_y"])
    ckpts = torch.from_numpy(rows["checkpoints"])  # (B, C, D)
    metric = evaluate(batcher.metric, ckpts, qx, qy)  # (B, C)
    print(json.dumps({
        "overrides": args.overrides, "split": args.split or cfg.collect.split, "theta0": cfg.trajectory.theta0, "tasks": args.tasks,
        "steps": rows["steps"][0].tolist(), "start_s": round(start_s, 1),
        "query_mean": [round(float(v), 4) for v in metric.mean(0)],
        "query_median": [round(float(v), 4) for v in metric.median(0).values],
        "travel": round(float((ckpts[:, -1] - ckpts[:, 0]).norm(dim=1).mean()), 3),
        "endpoint_spread": round(float(ckpts[:, -1].std(0).norm()), 3),
    }), flush=True)


if __name__ == "__main__":
    main()
