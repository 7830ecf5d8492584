"""Where the generator's chain passes relative to the true trajectory, segment by segment.

For unseen test tasks, runs the real inner optimiser (the collect stage's batched inner loop from
the generator's own theta_0) and the trained generator's chain, and prints one JSON line with, at
every segment end e_i: the inner-loop step of target i, the RMS distance (normalised weight units)
between the chain and the true target, and the query loss of both (the family's loss: MSE on
sinusoid, hence the keys). It shows whether errors compound along the chain
(docs/results/sinusoid.md, "Before the function-space term").

    python benchmarks/chain_diagnostic.py ./ltdi_runs/sinusoid/generator [--tasks 300]
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from ltdi_ray import load_generator
from ltdi_ray.diffusion import segment_ends
from ltdi_ray.pipelines.collect import make_batcher
from ltdi_ray.tasks.episodes import support_of
from ltdi_ray.trajectories.inner import evaluate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("generator_uri")
    p.add_argument("--tasks", type=int, default=300)
    args = p.parse_args()
    torch.set_num_threads(2)
    gen = load_generator(args.generator_uri)
    view = gen.view()  # the trained setting: family, normaliser, losses
    cfg = dataclasses.replace(gen.cfg, collect=dataclasses.replace(gen.cfg.collect, split="test"))
    # true trajectories of the test tasks, from the start the generator's chains use
    rows = make_batcher(cfg, shared=gen.theta0.shared)(list(range(args.tasks)))
    truth = torch.from_numpy(rows["checkpoints"])
    sx, sy = support_of(rows, view.family, raw=True)
    qx, qy = view.family.to_torch(rows["query_x"]), view.family.targets_to_torch(rows["query_y"])
    visited = dict(gen.generate_chain(sx, sy, seed=0))
    d = gen.cfg.diffusion
    indices = gen.meta["target_indices"][-d.segments:]
    out = []
    for end, idx in zip(segment_ends(d.steps, d.segments).tolist(), indices):
        if end not in visited:  # a sampler that jumps over this segment end
            continue
        z, target = view.norm.normalize(visited[end]), view.norm.normalize(truth[:, idx])
        made = evaluate(view.loss, visited[end].unsqueeze(1), qx, qy)[:, 0]
        true = evaluate(view.loss, truth[:, idx].unsqueeze(1), qx, qy)[:, 0]
        out.append({"diffusion_step": end, "inner_step": gen.facts.checkpoint_steps[idx],
                    "rms_to_target": round(float((z - target).square().mean().sqrt()), 4),
                    "query_mse_chain": round(float(made.mean()), 4), "query_mse_target": round(float(true.mean()), 4)})
    print(json.dumps({"generator": args.generator_uri, "tasks": args.tasks, "variant": d.variant,
                      "segments": out}))


if __name__ == "__main__":
    main()
