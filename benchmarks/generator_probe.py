"""Compare generator settings in-process (no Ray) on a collected dataset, at a fixed time or step budget.

Trains one generator with ``MetaTrainer`` exactly as the train stage does (same config keys), then
prints one JSON line with the query MSE (mean, median) of generated weights on ``--tasks`` unseen test
tasks for three samplers: the configured DDPM chain (``ddpm``), one DDIM jump per segment end
(``ddim1``) and the DDPM chain with 8 candidates kept by support loss (``ddpm_n8``).

    python -m ltdi_ray collect collect.num_tasks=4000 storage.uri=/tmp/sin4g
    python benchmarks/generator_probe.py /tmp/sin4g --seconds 120 --overrides diffusion.segments=1
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from ltdi_ray.config import load_config
from ltdi_ray.generator.api import WeightGenerator
from ltdi_ray.generator.build import DataFacts, build_diffusion, build_model, support_of
from ltdi_ray.meta.trainer import MetaTrainer, TaskStore
from ltdi_ray.models import WeightNormalizer
from ltdi_ray.nets.paramspec import ParamSpec
from ltdi_ray.pipelines.train import open_dataset
from ltdi_ray.storage.artifact import read_norm_stats
from ltdi_ray.tasks import make_family
from ltdi_ray.trajectories import initial_theta


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_uri", help="a storage.uri whose trajectories/ collect has written")
    p.add_argument("--seconds", type=float, default=120.0, help="training wall-clock budget")
    p.add_argument("--steps", type=int, default=0, help="a step budget instead (overrides --seconds)")
    p.add_argument("--tasks", type=int, default=600)
    p.add_argument("--overrides", nargs="*", default=[])
    args = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = load_config([f"storage.uri={args.run_uri}", *args.overrides])
    ds = open_dataset(cfg)
    diffusion, family = build_diffusion(cfg), make_family(cfg.task)
    rows = ds.load(["checkpoints", "pool_x", "pool_y", "support_idx"])
    stats = read_norm_stats(ds.loc)
    norm = WeightNormalizer(torch.from_numpy(stats["mean"]), torch.from_numpy(stats["std"]))
    targets = rows["checkpoints"][:, diffusion.checkpoint_indices(ds.manifest["steps"])]
    store = TaskStore(norm.normalize(torch.from_numpy(targets)), family.to_torch(rows["pool_x"]),
                      family.targets_to_torch(rows["pool_y"]), torch.from_numpy(rows["support_idx"].astype(np.int64)))
    facts = DataFacts(ds.spec.dim, ds.manifest["steps"])
    model = build_model(cfg, family, facts)
    trainer = MetaTrainer(model, diffusion, store, cfg.train)
    tic, step = time.time(), 0
    while (step < args.steps) if args.steps else (time.time() - tic < args.seconds):
        trainer.step(step)
        step += 1
    train_s = time.time() - tic
    gen = WeightGenerator(cfg, ParamSpec.from_json(ds.manifest["param_spec"]), facts, model, norm,
                          initial_theta(family, cfg.trajectory.init_seed))
    test = family.sample_many("test", range(args.tasks))
    sx, sy = support_of(test, family)
    out = {"overrides": args.overrides, "steps": step, "train_s": round(train_s, 1),
           "tasks_seen": step * cfg.train.meta_batch}
    for name, kw in [("ddpm", {"sampler": "ddpm"}), ("ddim1", {"sampler": "ddim", "sample_steps": 1}),
                     ("ddpm_n8", {"sampler": "ddpm", "num_samples": 8})]:
        mse = gen.query_metric(gen.generate_batch(sx, sy, seed=0, **kw), test)
        out[name] = [round(float(mse.mean()), 3), round(float(mse.median()), 3)]
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
