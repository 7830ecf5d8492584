"""Quality on Omniglot-242 few-shot classification under the evaluation protocol: seeds, controls, untouched tests.

For each shot count: the feature extractor (trained on the training characters by the first setting,
reused by the others: ``task.backbone``), 10,000 training episodes collected once, then for each seed s
the generator (``train.seed=s``), every SGD step size chosen on ``--val-tasks`` validation episodes (with
the seed-0 models, once), and every method and control (baselines under ``evaluate.baseline.seed=s``) on
the ``evaluate.num_tasks`` test episodes of ``evaluate.seed``. Then the same generators on
``--other-ways`` test episodes (trained on 5-way; the 5-way meta-trained baselines and ablations skip).
``--overrides task.split_by=alphabet --tag _alphabet`` holds out whole alphabets (a new extractor, trained
on the training alphabets only).

Prints one JSON line per (shots, seed) and (shots, seed, ways), and one per shot count with the comparison
over seeds (``ltdi_ray.evaluation.stats.over_seeds``); records land under ``--root``. Query accuracy in
[0, 1]. Figures: docs/results/omniglot.md.

    python benchmarks/quality_omniglot.py --data ../shared/data/omniglot [--shots 1 5] [--seeds 0 1 2]
        [--overrides k=v ...] [--tag _alphabet]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import torch

import ltdi_ray
from ltdi_ray import jsonline
from ltdi_ray.evaluation.protocol import choose_step_sizes, generator_validation, score, train_seed
from ltdi_ray.evaluation.report import format_table
from ltdi_ray.evaluation.stats import over_seeds
from ltdi_ray.pipelines.prepare import prepare

# the benchmark scale on a 2-core CPU: 10,000 training episodes per setting, the tiny denoiser (on
# 33-number class rows it matches `small` at equal time, 10x faster: docs/results/omniglot.md, "Earlier probe")
SCALE = ["task=omniglot", "task.generate=head", "collect.num_tasks=10000", "model.preset=tiny"]
METHODS = ["init", "finetune", "maml", "fomaml", "reptile", "maml_pool", "protonet", "protonet_sgd", "vanilla",
           "bridge_k3", "bridge_k1", "hypernet", "ltdi", "ltdi_finetune", "condition_shuffle"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the Omniglot archives (task.root)")
    p.add_argument("--root", default="/tmp/ltdi_omniglot", help="one directory per setting goes under it")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--other-ways", type=int, nargs="*", default=[10, 20])
    p.add_argument("--lr-grid", type=float, nargs="+", default=[0.3, 1.0, 3.0, 10.0])
    p.add_argument("--val-tasks", type=int, default=300, help="validation episodes per step size")
    p.add_argument("--backbone", help="a trained extractor to use (default: trained by the first setting)")
    p.add_argument("--tag", default="", help="suffix of the run directories (e.g. for a split's overrides)")
    p.add_argument("--overrides", nargs="*", default=[], help="extra config overrides (key=value)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    backbone = args.backbone
    for shots in args.shots:
        top = f"{args.root}/shots{shots}{args.tag}"
        common = [*SCALE, f"task.root={args.data}", f"task.shots={shots}", *args.overrides]
        common += [f"task.backbone={backbone}"] if backbone else []
        cfg = prepare(ltdi_ray.compose(*common, f"storage.uri={top}/data"))  # trains the extractor when none is given
        backbone = cfg.task.backbone
        common.append(f"task.backbone={backbone}")
        ltdi_ray.run("collect", ltdi_ray.compose(*common, f"storage.uri={top}/data"))
        chosen, per_seed, validation = {}, [], []
        for seed in args.seeds:
            tic = time.time()
            run, base = train_seed(common, top, seed)
            if not chosen:  # on validation episodes, once: the seed-0 models' step sizes serve every seed
                chosen = choose_step_sizes(base, args.methods, args.lr_grid, args.val_tasks)
            record = score(base, args.methods, chosen, diagnostics=["memorisation"])
            with open(os.path.join(run, "results_test.json"), "w") as fh:
                json.dump(record, fh, indent=1)
            per_seed.append({m: torch.tensor(v) for m, v in record["per_task"].items()})
            validation.append(generator_validation(base, args.methods))  # what a default is chosen by
            print(format_table(record), file=sys.stderr, flush=True)
            print(jsonline.dumps({"task": "omniglot", "ways": record["ways"], "shots": shots, "seed": seed,
                              "split": record["split"], "eval_seed": record["seed"], "tasks": record["tasks"],
                              "metric": record["metric"], "methods": record["methods"], "settings": record["settings"],
                              "diagnostics": record["diagnostics"], "validation": validation[-1],
                              "backbone": backbone, "overrides": args.overrides,
                              "seconds": round(time.time() - tic, 1)}), flush=True)
            for ways in args.other_ways:
                other = score(base, args.methods, chosen, [f"evaluate.ways={ways}"])
                print(jsonline.dumps({"task": "omniglot", "ways": ways, "shots": shots, "seed": seed,
                                  "trained_ways": record["ways"], "tasks": other["tasks"], "metric": other["metric"],
                                  "methods": other["methods"]}), flush=True)
        summary = over_seeds(per_seed, higher_is_better=True)
        val = {m: sum(v[m] for v in validation) / len(validation) for m in validation[0]}
        with open(f"{top}/summary.json", "w") as fh:
            fh.write(jsonline.dumps({"step_sizes": chosen, "validation": val, **summary}, indent=1))
        print(jsonline.dumps({"task": "omniglot", "shots": shots, "train_seeds": args.seeds, "overrides": args.overrides,
                          "step_sizes": {m: c["lr"] for m, c in chosen.items()}, "validation": val, **summary}),
              flush=True)


if __name__ == "__main__":
    main()
