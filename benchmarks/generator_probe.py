"""Compare generator settings in-process (no Ray) at a fixed time or step budget, on CPU or GPU.

Trains one generator with ``MetaTrainer`` as the train stage's workers do (same config keys; every
part built by ``ltdi_ray.generator.build`` and the task family's hooks, theta_0 by
``ltdi_ray.trajectories.theta0``) on either a collected dataset (``run_uri``) or ``--collect N``
training tasks collected in-process with the collect stage's batched inner loop (no Ray needed: this
is how GPU machines without Ray run it). Prints one JSON line: training tasks/s, a learning curve
(every ``--eval-every`` seconds: the family's query metric, MSE or accuracy, of one DDIM jump per
segment end on the scored tasks) and the final ``[mean, median, 95% CI half-width]`` on ``--tasks``
unseen tasks for three samplers: the DDPM chain (``ddpm``), one DDIM jump per segment end
(``ddim1``) and the DDPM chain with 8 candidates kept by support loss (``ddpm_n8``); and, where
every chain starts at weights the family computes from the support (``trajectory.theta0=prototype``;
Omniglot heads: the ProtoNet head), ``start``: those weights themselves.

The scored tasks are validation tasks (``--split val``, the default): settings are chosen on
validation tasks, and the test tasks stay unseen until the quality benchmarks' final tables
(docs/results/protocol.md); this probe never scores test tasks. ``--split train`` scores fresh
training episodes after the collected ones.
Figures: docs/results/method-choices.md, docs/results/omniglot.md, docs/results/performance.md.

    python -m ltdi_ray collect collect.num_tasks=4000 storage.uri=/tmp/sin4g
    python benchmarks/generator_probe.py /tmp/sin4g --seconds 120 --overrides diffusion.variant=bridge diffusion.segments=1
    python benchmarks/generator_probe.py --collect 10000 --device cuda --seconds 300 --overrides task.shots=10
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import ltdi_ray
from ltdi_ray.evaluation.stats import mean_ci
from ltdi_ray.generator.api import WeightGenerator
from ltdi_ray.generator.build import DataFacts, build_diffusion, build_trainer, make_normalizer
from ltdi_ray.meta.trainer import TaskStore
from ltdi_ray.pipelines.prepare import prepare
from ltdi_ray.storage.artifact import checkpoint_moments, read_norm_stats, stats_from_moments
from ltdi_ray.tasks import make_family
from ltdi_ray.tasks.episodes import support_of
from ltdi_ray.trajectories.theta0 import stored_start, theta0_of

COLUMNS = ["checkpoints", "pool_x", "pool_y", "support_idx"]


def dataset_rows(cfg):
    """The family, rows, norm stats, ParamSpec, saved steps and :class:`Theta0` of the dataset at
    ``storage.uri`` (as the train stage reads them)."""
    from ltdi_ray.pipelines.train import open_dataset

    ds = open_dataset(cfg)
    family = make_family(cfg.task, cfg.storage.endpoint_url)
    theta0 = theta0_of(cfg, family, stored_start(ds.loc, ds.manifest))
    return family, ds.load(COLUMNS), read_norm_stats(ds.loc, ds.manifest["norm_stats"]["sha256"]), ds.spec, list(ds.manifest["steps"]), theta0


def collected_rows(cfg, num_tasks: int, device: str, batch: int = 4096):
    """The same, collected in-process on ``device`` (statistics as the collect stage computes them;
    a single theta_0 is computed here: ``reptile`` meta-trains it)."""
    from ltdi_ray.pipelines.collect import make_batcher

    batcher = make_batcher(cfg, device)
    parts = [batcher(np.arange(i, min(i + batch, num_tasks))) for i in range(0, num_tasks, batch)]
    rows = {k: np.concatenate([p[k] for p in parts]) for k in COLUMNS}
    mean, std, _ = stats_from_moments(*checkpoint_moments(rows["checkpoints"]))
    stats = {"mean": mean, "std": std}
    return batcher.family, rows, stats, batcher.spec, cfg.trajectory.checkpoint_steps, batcher.theta0


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
    p.add_argument("--split", default="val", choices=["train", "val"],
                   help="the scored episodes' split (default val: settings are chosen on validation tasks; "
                        "train: fresh episodes after the collected ones)")
    p.add_argument("--overrides", nargs="*", default=[])
    args = p.parse_args()
    if bool(args.run_uri) == bool(args.collect):
        p.error("give either run_uri or --collect N")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = prepare(ltdi_ray.compose(*([f"storage.uri={args.run_uri}"] if args.run_uri else []), *args.overrides))
    tic = time.time()
    family, rows, stats, spec, steps, theta0 = (dataset_rows(cfg) if args.run_uri
                                                else collected_rows(cfg, args.collect, args.device))
    collect_s = time.time() - tic
    # from here on what every train worker does (pipelines/train_worker.py), on all tasks at once
    norm = make_normalizer(family, stats["mean"], stats["std"]).to(device)
    theta0 = theta0.to(device)
    rows["targets"] = rows.pop("checkpoints")[:, build_diffusion(cfg).checkpoint_indices(steps)]
    store = TaskStore.from_rows(rows, family, norm, device)
    facts = DataFacts(spec.dim, list(steps))
    trainer = build_trainer(cfg, family, facts, spec, norm, theta0, store, total_steps=args.steps or None)
    model = trainer.gen
    gen = WeightGenerator(cfg, spec, facts, model, norm, theta0.shared).to(device)  # shares model's weights
    model.train()  # WeightGenerator puts the model it wraps in eval mode
    first = len(store) if args.split == "train" else 0
    scored = family.sample_many(args.split, range(first, first + args.tasks), cfg.collect.seed)
    sx, sy = support_of(scored, family, device, raw=True)

    def score(theta=None, **kw):
        model.eval()
        metric = gen.query_metric(gen.generate_batch(sx, sy, seed=0, **kw) if theta is None else theta, scored)
        model.train()
        s = mean_ci(metric)
        return [round(s["mean"], 4), round(float(metric.median()), 4), round(s["ci95"], 4)]

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
    out = {"overrides": args.overrides, "device": args.device, "split": args.split, "collect_tasks": len(store),
           "collect_s": round(collect_s, 1), "steps": step, "train_s": round(train_s, 1),
           "tasks_seen": step * cfg.train.meta_batch, "tasks_per_s": round(step * cfg.train.meta_batch / train_s, 1),
           "parameters": sum(p.numel() for p in model.parameters()), "curve": curve}
    if theta0.mode == "prototype":  # where every chain starts: weights computed from the episode's support
        out["start"] = score(theta0.for_supports(family, *support_of(scored, family, device)))
    for name, kw in [("ddpm", {"sampler": "ddpm"}), ("ddim1", {"sampler": "ddim", "sample_steps": 1}),
                     ("ddpm_n8", {"sampler": "ddpm", "num_samples": 8})]:
        out[name] = score(**kw)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
