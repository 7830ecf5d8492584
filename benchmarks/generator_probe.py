"""Probe of the generator on a collected sinusoid dataset: in-process training, no Ray.

A research probe used while the train/evaluate stages are built (issue #3): trains a tiny
conditional diffusion model single-level on the final (k = 1) or local (k > 1) targets and prints
one JSON line with the query MSE of generated weights on 300 test tasks for several samplers,
plus the shared theta_0 ("init") for reference.

    python -m ltdi_ray collect collect.num_tasks=4000 task.pool=grid storage.uri=/tmp/sin4g
    python benchmarks/generator_probe.py /tmp/sin4g --segments 1 --parameterization x0 --weighting x0
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from ltdi_ray.config import load_config
from ltdi_ray.diffusion import make_diffusion
from ltdi_ray.meta import Generator, apply_meta_gradient, reptile_meta_gradient, single_level_step
from ltdi_ray.models import ResMLPDenoiser, SetEncoder, WeightNormalizer
from ltdi_ray.models.denoiser import DenoiserPreset
from ltdi_ray.pipelines.collect import make_batcher
from ltdi_ray.storage.artifact import read_norm_stats
from ltdi_ray.storage.dataset import TrajectoryDataset
from ltdi_ray.trajectories import evaluate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_uri")
    p.add_argument("--segments", type=int, default=1)
    p.add_argument("--parameterization", default="x0")
    p.add_argument("--weighting", default="x0")
    p.add_argument("--schedule", default="linear")
    p.add_argument("--variant", default="local_consistency")
    p.add_argument("--bridge-noise", type=float, default=0.5)
    p.add_argument("--no-residual", action="store_true")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--steps", type=int, default=1500, help="training steps")
    p.add_argument("--meta", default="none", choices=["none", "reptile"])
    args = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)

    ds = TrajectoryDataset.open(f"{args.run_uri}/trajectories")
    rows = ds.load(["checkpoints", "pool_x", "pool_y"])
    stats = read_norm_stats(ds.loc)
    norm = WeightNormalizer(torch.from_numpy(stats["mean"]), torch.from_numpy(stats["std"]))
    diff = make_diffusion(args.variant, args.schedule, 20, args.segments, args.parameterization, args.weighting,
                          bridge_noise=args.bridge_noise, bridge_residual=not args.no_residual)
    targets = norm.normalize(torch.from_numpy(rows["checkpoints"][:, diff.checkpoint_indices(ds.manifest["steps"])]))
    px, py = torch.from_numpy(rows["pool_x"]), torch.from_numpy(rows["pool_y"])
    shots = ds.manifest["config"]["task"]["shots"]
    dim = targets.shape[-1]
    gen = Generator(SetEncoder(1, 1, 64), ResMLPDenoiser(dim, 20, DenoiserPreset(args.width, 3, 64)))
    opt = torch.optim.Adam(gen.parameters(), lr=1e-3)
    start = time.time()
    for _ in range(args.steps):
        b = torch.randint(0, len(targets), (64,))
        pick = torch.argsort(torch.rand(64, px.shape[1]), 1)[:, :shots].unsqueeze(-1)  # a fresh K-subset of the pool
        sx, sy = torch.gather(px[b], 1, pick), torch.gather(py[b], 1, pick)
        if args.meta == "none":
            single_level_step(gen, diff, opt, targets[b], sx, sy, draws=4)
        else:
            deltas, _ = reptile_meta_gradient(gen, diff, targets[b[:16]], sx[:16], sy[:16], draws=4)
            apply_meta_gradient(gen, opt, deltas, 16)
    train_s = time.time() - start

    batcher = make_batcher(load_config([]))
    test = batcher.family.sample_many("test", range(300))
    pick = test["support_idx"][..., None].astype(np.int64)
    sx = torch.from_numpy(np.take_along_axis(test["pool_x"], pick, 1))
    sy = torch.from_numpy(np.take_along_axis(test["pool_y"], pick, 1))
    qx, qy = torch.from_numpy(test["query_x"]), torch.from_numpy(test["query_y"])
    out = {**vars(args), "train_s": round(train_s)}
    with torch.no_grad():
        c = gen.cond(sx, sy)
        for sampler, steps in [("ddpm", None), ("ddim", None), ("ddim", 5), ("ddim", 1)]:
            z = diff.sample(gen.denoiser, c, dim, start=norm.normalize(batcher.shared_theta0), sampler=sampler,
                            sample_steps=steps, generator=torch.Generator().manual_seed(1))
            mse = evaluate(batcher.loss, norm.denormalize(z).unsqueeze(1), qx, qy)[:, 0]
            out[f"{sampler}{steps or ''}"] = {"mean": round(float(mse.mean()), 3), "median": round(float(mse.median()), 3)}
        init = evaluate(batcher.loss, batcher.shared_theta0.expand(300, 1, -1), qx, qy)[:, 0]
        out["init"] = round(float(init.mean()), 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
