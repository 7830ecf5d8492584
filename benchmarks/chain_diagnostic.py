"""Where the generator's chain passes relative to the true trajectory, segment by segment.

For unseen test tasks, runs the real inner optimiser (the collection trajectory) and the trained
generator's chain, and prints one JSON line with, at every segment end e_i: the inner-loop step of
target i, the RMS distance (normalised weight units) between the chain and the true target, and the
query MSE of both. It shows whether errors compound along the chain.

    python benchmarks/chain_diagnostic.py ./ltdi_runs/sinusoid/generator [--tasks 300]
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from ltdi_ray import load_generator
from ltdi_ray.diffusion import segment_ends
from ltdi_ray.generator.build import support_of
from ltdi_ray.pipelines.collect import make_batcher
from ltdi_ray.trajectories import evaluate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("generator_uri")
    p.add_argument("--tasks", type=int, default=300)
    args = p.parse_args()
    torch.set_num_threads(2)
    gen = load_generator(args.generator_uri)
    cfg = dataclasses.replace(gen.cfg, collect=dataclasses.replace(gen.cfg.collect, split="test"))
    rows = make_batcher(cfg, start=gen.theta0)(list(range(args.tasks)))  # true trajectories of the test tasks
    truth = torch.from_numpy(rows["checkpoints"])
    sx, sy = support_of(rows, gen.family, raw=True)
    qx, qy = gen.family.to_torch(rows["query_x"]), gen.family.targets_to_torch(rows["query_y"])
    visited = dict(gen.generate_chain(sx, sy, seed=0))
    indices = gen.meta["target_indices"][-gen.cfg.diffusion.segments:]
    out = []
    for end, idx in zip(segment_ends(gen.cfg.diffusion.steps, gen.cfg.diffusion.segments).tolist(), indices):
        if end not in visited:  # a sampler that jumps over this segment end
            continue
        z, target = gen.norm.normalize(visited[end]), gen.norm.normalize(truth[:, idx])
        made = evaluate(gen.loss, visited[end].unsqueeze(1), qx, qy)[:, 0]
        true = evaluate(gen.loss, truth[:, idx].unsqueeze(1), qx, qy)[:, 0]
        out.append({"diffusion_step": end, "inner_step": gen.facts.checkpoint_steps[idx],
                    "rms_to_target": round(float((z - target).square().mean().sqrt()), 4),
                    "query_mse_chain": round(float(made.mean()), 4), "query_mse_target": round(float(true.mean()), 4)})
    print(json.dumps({"generator": args.generator_uri, "tasks": args.tasks, "variant": gen.cfg.diffusion.variant,
                      "segments": out}))


if __name__ == "__main__":
    main()
