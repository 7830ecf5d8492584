"""Quality on sinusoid regression under the evaluation protocol: untouched test tasks, seeds and controls.

For each shot count: collect the training tasks once; choose every SGD step size on validation tasks
(``--val-tasks``, with the seed-0 generator and baselines); then for each seed s train the generator
(``train.seed=s``) and score every method and control (baselines meta-trained under
``evaluate.baseline.seed=s``, ablations trained under ``train.seed=s``) on the ``evaluate.num_tasks``
test tasks of ``evaluate.seed``, which no choice of this project has seen: once with supports and
queries as in training (``grid``) and once at continuous x (``off_grid``: ``+evaluate.task.pool=random``).
``validation``: every generator's last-epoch score on the training run's validation tasks, mean over
seeds, which is what a default among them is chosen by.

Prints one JSON line per (shots, seed, table) and then one per (shots, table) with the comparison over
seeds (``ltdi_ray.evaluation.stats.over_seeds``: mean and spread over seeds, ``ltdi`` minus every
method per seed and pooled, and the verdict); every record also lands under ``--root``
(``shots<K>/seed<s>/results_<table><label>.json``, ``shots<K>/summary<label>.json``; ``--label`` keeps a
later run of some methods on a finished root from overwriting its records). Figures: docs/results/sinusoid.md.

    python benchmarks/quality_sinusoid.py [--root /tmp/ltdi_quality] [--shots 5 10] [--seeds 0 1 2]
        [--methods ...] [--overrides k=v ...] [--label _bilevel]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

import ltdi_ray
from ltdi_ray import jsonline
from ltdi_ray.evaluation.protocol import choose_step_sizes, generator_validation, score, train_seed
from ltdi_ray.evaluation.stats import over_seeds

METHODS = ["init", "finetune", "maml", "fomaml", "reptile", "maml_pool", "encoder_fit", "vanilla", "bridge_k3",
           "bridge_k1", "hypernet", "ltdi", "ltdi_finetune", "condition_shuffle"]
OFF_GRID = ["init", "finetune", "maml", "fomaml", "reptile", "encoder_fit", "bridge_k3", "bridge_k1", "hypernet",
            "ltdi", "ltdi_finetune", "condition_shuffle"]
TABLES = {"grid": [], "off_grid": ["+evaluate.task.pool=random"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="/tmp/ltdi_quality", help="one directory per shot count goes under it")
    p.add_argument("--shots", type=int, nargs="+", default=[5, 10])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--lr-grid", type=float, nargs="+", default=[0.001, 0.003, 0.01, 0.03])
    p.add_argument("--val-tasks", type=int, default=300, help="validation tasks per step size")
    p.add_argument("--overrides", nargs="*", default=[], help="extra config overrides (key=value)")
    p.add_argument("--label", default="", help="suffix of the record files (the run directories are shared)")
    args = p.parse_args()
    for shots in args.shots:
        top = f"{args.root}/shots{shots}"
        common = [f"task.shots={shots}", *args.overrides]
        ltdi_ray.run("collect", ltdi_ray.compose(*common, f"storage.uri={top}/data"))
        chosen, per_seed, validation = {}, {table: [] for table in TABLES}, []
        for seed in args.seeds:
            tic = time.time()
            run, base = train_seed(common, top, seed)
            if not chosen:  # on validation tasks, once: the seed-0 models' step sizes serve every seed
                chosen = choose_step_sizes(base, args.methods, args.lr_grid, args.val_tasks)
            for table, extra in TABLES.items():
                methods = args.methods if table == "grid" else [m for m in args.methods if m in OFF_GRID]
                record = score(base, methods, chosen, extra, ["memorisation"] if table == "grid" else [])
                with open(os.path.join(run, f"results_{table}{args.label}.json"), "w") as fh:
                    json.dump(record, fh, indent=1)
                per_seed[table].append({m: torch.tensor(v) for m, v in record["per_task"].items()})
                if table == "grid":  # the generators' own validation scores: what a default is chosen by
                    validation.append(generator_validation(base, methods))
                print(jsonline.dumps({"task": "sinusoid", "shots": shots, "seed": seed, "table": table,
                                  "split": record["split"], "eval_seed": record["seed"], "tasks": record["tasks"],
                                  "metric": record["metric"], "methods": record["methods"],
                                  "diagnostics": record["diagnostics"], "settings": record["settings"],
                                  "validation": validation[-1] if table == "grid" else None,
                                  "seconds": round(time.time() - tic, 1)}), flush=True)
        summary = {table: over_seeds(rows) for table, rows in per_seed.items()}
        val = {m: sum(v[m] for v in validation) / len(validation) for m in validation[0]}
        with open(f"{top}/summary{args.label}.json", "w") as fh:
            fh.write(jsonline.dumps({"step_sizes": chosen, "validation": val, **summary}, indent=1))
        for table, s in summary.items():
            print(jsonline.dumps({"task": "sinusoid", "shots": shots, "table": table, "train_seeds": args.seeds,
                              "step_sizes": {m: c["lr"] for m, c in chosen.items()}, "validation": val, **s}),
                  flush=True)


if __name__ == "__main__":
    main()
