"""The text family's support start (``tasks/text_start.py``) on validation tasks, against the rule it encodes.

For ``--tasks`` validation episodes of ``task=text`` (both kinds, ``task.kinds=mixed``): query accuracy of the
base model (``init``), of the nearest-prototype rule on the adapted block's inputs at the answer position
(a reference: the rule with no adapter in between), and of the prototype adapter for each ``--ridge``, with
its accuracy on its own support and milliseconds per task. Prints one JSON line. Figures:
docs/results/text.md.

    python benchmarks/text_start.py --tasks 200 --ridge 0.0003 0.001 0.003
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.func import functional_call, vmap

import ltdi_ray
from ltdi_ray.base_nets.paramspec import ParamSpec
from ltdi_ray.evaluation.stats import mean_ci
from ltdi_ray.generator.heads import prototypes
from ltdi_ray.tasks import make_family
from ltdi_ray.tasks.episodes import support_of
from ltdi_ray.tasks.text_start import prototype_adapter
from ltdi_ray.trajectories.theta0 import initial_theta


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--ridge", type=float, nargs="+", default=[1e-3])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--overrides", nargs="*", default=[])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ltdi_ray.compose("task=text", *args.overrides)
    fam = make_family(cfg.task)
    episodes = fam.sample_many("val", range(args.tasks), cfg.collect.seed)
    sx, sy = support_of(episodes, fam, "cpu")
    qx, qy = fam.to_torch(episodes["query_x"]), fam.targets_to_torch(episodes["query_y"])
    net = fam.build_net()
    spec, init = ParamSpec.from_module(net), initial_theta(fam, cfg.trajectory.init_seed)

    def accuracy(theta, x, y):
        return (functional_call(net, spec.unflatten(theta), (x,)).argmax(-1) == y).float().mean()

    def summary(values):
        s = mean_ci(values)
        return {"mean": round(s["mean"], 4), "ci95": round(s["ci95"], 4)}

    answer = -fam.pool_classes - 1  # the prompt's last position
    protos = prototypes(sx[:, :, answer], sy, fam.pool_classes)
    nearest = torch.cdist(qx[:, :, answer], protos).argmin(-1)
    out = {"benchmark": "text_start", "tasks": args.tasks, "overrides": args.overrides,
           "init": summary(vmap(accuracy, in_dims=(None, 0, 0))(init, qx, qy)),
           "nearest_prototype": summary((nearest == qy).float().mean(1))}
    for ridge in args.ridge:
        tic = time.perf_counter()
        theta = prototype_adapter(net, init, sx, sy, ridge)
        ms = (time.perf_counter() - tic) / args.tasks * 1000
        out[f"adapter_ridge_{ridge:g}"] = {**summary(vmap(accuracy)(theta, qx, qy)),
                                           "support": round(float(vmap(accuracy)(theta, sx, sy).mean()), 4),
                                           "ms_per_task": round(ms, 1)}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
