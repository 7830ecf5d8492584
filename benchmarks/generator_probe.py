"""Compare generator settings in-process (no Ray) at a fixed time or step budget, on CPU or GPU.

Trains one generator with ``MetaTrainer`` exactly as the train stage does (same config keys) on
either a collected dataset (``run_uri``) or ``--collect N`` training tasks collected in-process
with the collect stage's batched inner loop (no Ray needed: this is how GPU machines without Ray
run it). Prints one JSON line: training tasks/s, a learning curve (``--eval-every`` seconds: query
metric (MSE or accuracy) of one DDIM jump per segment end on the test tasks) and the final metric (mean, median, 95% CI half-width) on
``--tasks`` unseen test tasks (``--split``) for three samplers (and, for heads started at ProtoNet, ``start``:
the ProtoNet heads themselves): the DDPM chain (``ddpm``), one DDIM jump per
segment end (``ddim1``) and the DDPM chain with 8 candidates kept by support loss (``ddpm_n8``).

    python -m ltdi_ray collect collect.num_tasks=4000 storage.uri=/tmp/sin4g
    python benchmarks/generator_probe.py /tmp/sin4g --seconds 120 --overrides diffusion.segments=1
    python benchmarks/generator_probe.py --collect 10000 --device cuda --seconds 300 --overrides task.shots=10
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from ltdi_ray.config import load_config
from ltdi_ray.generator.api import WeightGenerator
from ltdi_ray.generator.build import (DataFacts, build_chain_loss, build_diffusion, build_function_loss, build_model,
                                      make_normalizer, support_of)
from ltdi_ray.meta.trainer import MetaTrainer, TaskStore
from ltdi_ray.models.heads import prototype_head
from ltdi_ray.pipelines.backbone import ensure_backbone
from ltdi_ray.pipelines.start import dataset_start
from ltdi_ray.tasks import make_family
from ltdi_ray.storage.artifact import checkpoint_moments, stats_from_moments
from ltdi_ray.trajectories import initial_theta
from ltdi_ray.trajectories.batch import SHARED_MODES


def dataset_rows(cfg):
    """Rows, norm stats, ParamSpec, saved steps and shared theta_0 (or None) of the dataset at ``storage.uri``."""
    from ltdi_ray.pipelines.train import open_dataset  # imports Ray
    from ltdi_ray.storage.artifact import read_norm_stats

    ds = open_dataset(cfg)
    rows = ds.load(["checkpoints", "pool_x", "pool_y", "support_idx"])
    return rows, read_norm_stats(ds.loc), ds.spec, ds.manifest["steps"], dataset_start(ds.loc, ds.manifest)


def collected_rows(cfg, num_tasks: int, device: str, batch: int = 4096):
    """The same, collected in-process on ``device`` (stats as the collect stage; ``reptile`` starts meta-trained here)."""
    from ltdi_ray.pipelines.collect import make_batcher

    batcher = make_batcher(cfg, device)
    parts = [batcher(np.arange(i, min(i + batch, num_tasks))) for i in range(0, num_tasks, batch)]
    rows = {k: np.concatenate([p[k] for p in parts]) for k in ["checkpoints", "pool_x", "pool_y", "support_idx"]}
    mean, std, _ = stats_from_moments(*checkpoint_moments(rows["checkpoints"]))
    stats = {"mean": mean, "std": std}
    start = batcher.shared_theta0.cpu() if cfg.trajectory.theta0 in SHARED_MODES else None
    return rows, stats, batcher.spec, list(batcher.opt.checkpoint_steps), start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_uri", nargs="?", help="a storage.uri whose trajectories/ collect has written")
    p.add_argument("--collect", type=int, default=0, help="collect this many training tasks in-process instead")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=120.0, help="training wall-clock budget")
    p.add_argument("--steps", type=int, default=0,
                   help="a step budget instead (overrides --seconds; also the length of train.lr_schedule=cosine)")
    p.add_argument("--eval-every", type=float, default=0.0, help="seconds between learning-curve points")
    p.add_argument("--tasks", type=int, default=600)
    p.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="the scored episodes' split (train: fresh episodes after the collected ones)")
    p.add_argument("--overrides", nargs="*", default=[])
    args = p.parse_args()
    if bool(args.run_uri) == bool(args.collect):
        p.error("give either run_uri or --collect N")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = ensure_backbone(load_config(([f"storage.uri={args.run_uri}"] if args.run_uri else []) + list(args.overrides)))
    torch.manual_seed(cfg.train.seed)  # the generator's initial weights, as in the train stage
    tic = time.time()
    rows, stats, spec, steps, start = dataset_rows(cfg) if args.run_uri else collected_rows(cfg, args.collect, args.device)
    collect_s = time.time() - tic
    diffusion, family = build_diffusion(cfg), make_family(cfg.task)
    norm = make_normalizer(cfg, stats["mean"], stats["std"]).to(device)
    targets = torch.from_numpy(rows["checkpoints"][:, diffusion.checkpoint_indices(steps)]).to(device)
    store = TaskStore(norm.normalize(targets), family.to_torch(rows["pool_x"]).to(device),
                      family.targets_to_torch(rows["pool_y"]).to(device),
                      torch.from_numpy(rows["support_idx"].astype(np.int64)).to(device), classes=family.pool_classes)
    facts = DataFacts(spec.dim, steps)
    model = build_model(cfg, family, facts).to(device)
    theta0 = (initial_theta(family, cfg.trajectory.init_seed) if start is None else start).to(device)
    trainer = MetaTrainer(model, diffusion, store, cfg.train, total_steps=args.steps or None,
                          function_loss=build_function_loss(cfg, family, spec, norm),
                          chain_loss=build_chain_loss(cfg, family, spec, norm, theta0))
    gen = WeightGenerator(cfg, spec, facts, model, norm, theta0).to(device)
    first = len(store) if args.split == "train" else 0
    test = family.sample_many(args.split, range(first, first + args.tasks), cfg.collect.seed)
    sx, sy = support_of(test, family, device, raw=True)

    def score(theta=None, **kw):
        model.eval()
        metric = gen.query_metric(gen.generate_batch(sx, sy, seed=0, **kw) if theta is None else theta, test)
        model.train()
        ci95 = 1.96 * float(metric.std()) / len(metric) ** 0.5
        return [round(float(metric.mean()), 4), round(float(metric.median()), 4), round(ci95, 4)]

    curve, step, train_s, next_eval = [], 0, 0.0, args.eval_every
    while (step < args.steps) if args.steps else (train_s < args.seconds):
        t0 = time.time()
        trainer.step(step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_s += time.time() - t0
        step += 1
        if args.eval_every and train_s >= next_eval:
            curve.append([round(train_s, 1), step, *score(sampler="ddim", sample_steps=1)])
            next_eval += args.eval_every
    out = {"overrides": args.overrides, "device": args.device, "collect_tasks": len(store),
           "collect_s": round(collect_s, 1), "steps": step, "train_s": round(train_s, 1),
           "tasks_seen": step * cfg.train.meta_batch, "tasks_per_s": round(step * cfg.train.meta_batch / train_s, 1),
           "parameters": sum(p.numel() for p in model.parameters()), "curve": curve}
    if cfg.trajectory.theta0 == "prototype":  # where every chain starts: the episode's ProtoNet head
        out["start"] = score(prototype_head(*support_of(test, family, device), family.pool_classes))
    for name, kw in [("ddpm", {"sampler": "ddpm"}), ("ddim1", {"sampler": "ddim", "sample_steps": 1}),
                     ("ddpm_n8", {"sampler": "ddpm", "num_samples": 8})]:
        out[name] = score(**kw)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
