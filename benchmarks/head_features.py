"""Backbone features of Omniglot episode pools: every stored drawing through the extractor, or each
distinct drawing once (``OmniglotFamily.to_torch``, what collect, train and evaluate use).

Prints one JSON line: episodes, drawings, distinct drawings, seconds of both paths and whether their
features are identical (docs/results/omniglot.md, "Speed: backbone features once per distinct drawing").

    python benchmarks/head_features.py --data ../shared/data/omniglot --backbone <run>/backbone/backbone.safetensors
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import ltdi_ray
from ltdi_ray.tasks import make_family


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the Omniglot archives (task.root)")
    p.add_argument("--backbone", default="random", help="task.backbone: a safetensors file or `random`")
    p.add_argument("--episodes", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ltdi_ray.compose("task=omniglot", f"task.root={args.data}", "task.generate=head",
                           f"task.backbone={args.backbone}")
    family = make_family(cfg.task)
    pools = family.sample_many("train", range(args.episodes), cfg.collect.seed)["pool_x"]
    tic = time.time()
    every = family.net_input(family.decode(pools))
    every_s = time.time() - tic
    tic = time.time()
    distinct = family.to_torch(pools)
    distinct_s = time.time() - tic
    print(json.dumps({"episodes": args.episodes, "drawings": int(pools.shape[0] * pools.shape[1]),
                      "distinct": len(np.unique(pools.reshape(len(pools) * pools.shape[1], -1), axis=0)),
                      "every_drawing_s": round(every_s, 2), "distinct_once_s": round(distinct_s, 2),
                      "speedup": round(every_s / distinct_s, 1), "identical": bool(torch.equal(every, distinct)),
                      "threads": args.threads}))


if __name__ == "__main__":
    main()
