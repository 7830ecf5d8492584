"""Does a trained generator fit its own training tasks? Scores on training tasks, no test task involved.

For the first ``--tasks`` training tasks of a local run directory: the query metric of the stored trajectory
starts (theta_0) and ends (theta_M), read back through the generator's own scoring path, and of the weights
the generator makes from each task's stored support; and the RMS distance of the generated weights to each
task's theta_M against the spread of the theta_M around their mean (a generator that learned nothing
task-specific sits as far from each theta_M as their mean does). Prints one JSON line. Figures:
docs/results/text.md.

    python benchmarks/train_fit.py --run /tmp/ltdi_text/seed0 [--tasks 100]
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np
import pyarrow.parquet as pq
import torch

import ltdi_ray
from ltdi_ray.tasks.episodes import support_of


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a local run directory (trajectories/ and generator/ in it)")
    p.add_argument("--tasks", type=int, default=100)
    args = p.parse_args()
    gen = ltdi_ray.load_generator(os.path.join(args.run, "generator"))
    files = sorted(glob.glob(os.path.join(args.run, "trajectories", "data", "*.parquet")))
    table = pq.read_table(files, columns=["task_id", "checkpoints"]).slice(0, args.tasks).to_pydict()
    n, dim = len(table["task_id"]), gen.spec.dim
    ckpts = torch.tensor(np.stack([np.asarray(c, dtype=np.float32).reshape(-1, dim) for c in table["checkpoints"]]))
    fam = gen.family
    episodes = fam.sample_many(gen.cfg.collect.split, table["task_id"], gen.cfg.collect.seed)
    sx, sy = support_of(episodes, fam, raw=True)
    generated = gen.generate_batch(sx, sy, seed=0)
    ends = ckpts[:, -1]
    print(json.dumps({
        "run": args.run, "tasks": n, "metric": fam.metric_name,
        "theta_0": round(float(gen.query_metric(ckpts[:, 0], episodes).mean()), 4),
        "theta_M": round(float(gen.query_metric(ends, episodes).mean()), 4),
        "generated": round(float(gen.query_metric(generated, episodes).mean()), 4),
        "rms_generated_to_own_theta_M": round(float((generated - ends).square().mean().sqrt()), 5),
        "rms_theta_M_to_their_mean": round(float((ends - ends.mean(0)).square().mean().sqrt()), 5),
    }))


if __name__ == "__main__":
    main()
