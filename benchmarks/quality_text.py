"""Quality on text tasks (task=text, SmolLM2-135M LoRA adapters) under the evaluation protocol.

The training trajectories are collected once (``experiment=text_cpu``: 3,000 tasks on a CPU); then for each
seed s the generator (``train.seed=s``), every step size chosen on ``--val-tasks`` validation episodes (with
the seed-0 models, once: the meta-learned init's, the generator's fine-tuning and the short fine-tuning's),
and every method and control on the ``evaluate.num_tasks`` test episodes of ``evaluate.seed``, twice: tasks
of kinds seen in training (new rule-and-label combinations) and tasks of held-out kinds.

Prints one JSON line per (seed, kinds) and one per kinds with the comparison over seeds
(``ltdi_ray.evaluation.stats.over_seeds``); records land under ``--root``. Query accuracy in [0, 1].
Figures: docs/results/text.md.

    python benchmarks/quality_text.py [--seeds 0 1] [--overrides k=v ...]
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

SCALE = ["task=text", "experiment=text_cpu"]
METHODS = ["init", "in_context", "finetune_short", "finetune", "reptile", "protonet", "hypernet", "ltdi",
           "ltdi_finetune", "condition_shuffle"]
KINDS = ("seen", "heldout")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="/tmp/ltdi_text")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--lr-grid", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 1.0])
    p.add_argument("--val-tasks", type=int, default=100, help="validation episodes per step size")
    p.add_argument("--overrides", nargs="*", default=[], help="extra config overrides (key=value)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    common = [*SCALE, *args.overrides]
    ltdi_ray.run("collect", ltdi_ray.compose(*common, f"storage.uri={args.root}/data"))
    chosen, per_seed, validation = {}, {k: [] for k in KINDS}, []
    for seed in args.seeds:
        tic = time.time()
        run, base = train_seed(common, args.root, seed)
        if not chosen:  # validation episodes of both kinds (task.kinds=mixed), once
            chosen = choose_step_sizes(base, args.methods, args.lr_grid, args.val_tasks)
        validation.append(generator_validation(base, args.methods))
        for kinds in KINDS:
            diagnostics = ["memorisation"] if kinds == "seen" else []  # does it copy or blend training ends?
            record = score(base, args.methods, chosen, [f"+evaluate.task.kinds={kinds}"], diagnostics)
            with open(os.path.join(run, f"results_test_{kinds}.json"), "w") as fh:
                json.dump(record, fh, indent=1)
            per_seed[kinds].append({m: torch.tensor(v) for m, v in record["per_task"].items()})
            print(format_table(record), file=sys.stderr, flush=True)
            print(jsonline.dumps({"task": "text", "kinds": kinds, "seed": seed, "split": record["split"],
                                  "eval_seed": record["seed"], "tasks": record["tasks"], "metric": record["metric"],
                                  "methods": record["methods"], "settings": record["settings"],
                                  "diagnostics": record["diagnostics"],
                                  "validation": validation[-1], "overrides": args.overrides,
                                  "seconds": round(time.time() - tic, 1)}), flush=True)
    val = {m: sum(v[m] for v in validation) / len(validation) for m in validation[0]}
    for kinds in KINDS:
        summary = over_seeds(per_seed[kinds], higher_is_better=True)
        with open(f"{args.root}/summary_{kinds}.json", "w") as fh:
            fh.write(jsonline.dumps({"step_sizes": chosen, "validation": val, **summary}, indent=1))
        print(jsonline.dumps({"task": "text", "kinds": kinds, "train_seeds": args.seeds, "overrides": args.overrides,
                              "step_sizes": {m: c["lr"] for m, c in chosen.items()}, "validation": val, **summary}),
              flush=True)


if __name__ == "__main__":
    main()
