"""Quality on Omniglot-242 few-shot classification: the whole pipeline for 5-way 1-shot and 5-shot.

For each shot count it runs backbone -> collect -> train, chooses the SGD step size of every
gradient-adapted method on validation episodes, scores every method on ``evaluate.num_tasks``
test episodes (unseen characters) and prints one JSON line,
``{"task": "omniglot", "ways": N, "shots": K, "tasks": 600, "metric": "accuracy", "methods": {NAME: {"mean",
"ci95", "ms_per_task"}}, "settings": {...}, "lr_selection": {...}, "seconds": ...}``, NAME in init, finetune,
maml, fomaml, reptile, protonet, single_level, vanilla, ltdi, ltdi_finetune (query accuracy in [0, 1]).
Then the same generator on ``--other-ways`` episodes (trained on 5-way; the baselines meta-trained
for 5 ways are skipped there), one JSON line each. The first setting trains the feature extractor;
the others reuse it (``task.backbone``), so every setting and method sees the same features.
Figures: docs/results/omniglot.md ("Omniglot-242 benchmark, 5-way 1 and 5 shots").

    python benchmarks/quality_omniglot.py --data ../shared/data/omniglot [--shots 1 5] [--overrides k=v ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Dict, List

import torch

import ltdi_ray
from ltdi_ray.evaluation.report import format_table
from ltdi_ray.evaluation.stats import paired_differences
from ltdi_ray.pipelines.prepare import prepare

# the benchmark scale on a 2-core CPU: 10,000 training episodes per setting, the tiny denoiser (on
# 33-number class rows it matches `small` at equal time, 10x faster: docs/results/omniglot.md, "Earlier probe")
SCALE = ["task=omniglot", "task.generate=head", "collect.num_tasks=10000", "model.preset=tiny"]
# The sinusoid step sizes (MAML paper: 0.01) barely move a head on unit-length features; a paper would
# choose them on validation tasks, so this does, per method. MAML and Reptile test with the step size
# they were meta-trained with (MAML's protocol), so one value sets both.
LR_KEYS = {"maml": ["evaluate.adapt_lr", "evaluate.baseline.inner_lr"],
           "fomaml": ["evaluate.adapt_lr", "evaluate.baseline.inner_lr"],
           "reptile": ["evaluate.adapt_lr", "evaluate.baseline.inner_lr"],
           "ltdi_finetune": ["evaluate.ltdi_adapt_lr"]}
FIXED = ["init", "finetune", "protonet", "single_level", "vanilla", "ltdi"]


def select_lrs(base: List[str], grid: List[float], tasks: int) -> Dict[str, dict]:
    """Score every LR_KEYS method at every step size on ``tasks`` validation episodes.

    Returns ``{method: {"lr": best, "val": {lr: mean accuracy}}}``.
    """
    scores: Dict[str, Dict[float, float]] = {m: {} for m in LR_KEYS}
    for lr in grid:
        keys = sorted({k for ks in LR_KEYS.values() for k in ks})
        cfg = ltdi_ray.compose(*base, "evaluate.split=val", f"evaluate.num_tasks={tasks}",
                               f"evaluate.methods=[{','.join(LR_KEYS)}]", *(f"{k}={lr}" for k in keys))
        for method, r in ltdi_ray.run("evaluate", cfg)["methods"].items():
            scores[method][lr] = r["mean"]
    return {m: {"lr": max(s, key=s.get), "val": s} for m, s in scores.items()}


def test_table(base: List[str], chosen: Dict[str, dict], methods: List[str]) -> dict:
    """Every method on the test episodes, each gradient-adapted one at its chosen step size; one record."""
    runs = [[f"evaluate.methods=[{','.join(m for m in methods if m not in LR_KEYS)}]"]]
    runs += [[f"evaluate.methods=[{m}]", *(f"{k}={chosen[m]['lr']}" for k in LR_KEYS[m])]
             for m in methods if m in LR_KEYS]
    record: dict = {}
    for extra in runs:
        summary = ltdi_ray.run("evaluate", ltdi_ray.compose(*base, *extra))
        with open(summary["uri"]) as fh:
            part = json.load(fh)
        merged = {k: {**record.get(k, {}), **part[k]} for k in ("methods", "settings", "per_task")}
        record = {**part, **merged}
    record["methods"] = {m: record["methods"][m] for m in methods if m in record["methods"]}
    record["per_task"] = {m: record["per_task"][m] for m in record["methods"]}  # in the table's order
    record["ltdi_minus"] = paired_differences({m: torch.tensor(v, dtype=torch.float64)
                                               for m, v in record["per_task"].items()})
    with open(summary["uri"], "w") as fh:  # the merged table is the run's results.json
        json.dump(record, fh, indent=1)
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the Omniglot archives (task.root)")
    p.add_argument("--root", default="/tmp/ltdi_omniglot", help="one run directory per setting goes under it")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--other-ways", type=int, nargs="*", default=[10, 20])
    p.add_argument("--lr-grid", type=float, nargs="+", default=[0.03, 0.1, 0.3, 1.0, 3.0])
    p.add_argument("--val-tasks", type=int, default=300, help="validation episodes per step size")
    p.add_argument("--backbone", help="a trained extractor to use (default: trained by the first setting)")
    p.add_argument("--tag", default="", help="suffix of the run directories (e.g. for an ablation's overrides)")
    p.add_argument("--overrides", nargs="*", default=[], help="extra config overrides (key=value)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    backbone = args.backbone
    for shots in args.shots:
        tic = time.time()
        base = [*SCALE, f"task.root={args.data}", f"task.shots={shots}",
                f"storage.uri={args.root}/shots{shots}{args.tag}", *args.overrides]
        base += [f"task.backbone={backbone}"] if backbone else []
        cfg = prepare(ltdi_ray.compose(*base))  # the family's prepare: trains the extractor when none is given
        backbone = cfg.task.backbone
        base.append(f"task.backbone={backbone}")
        ltdi_ray.run("collect", cfg)
        ltdi_ray.run("train", cfg)
        chosen = select_lrs(base, args.lr_grid, args.val_tasks)
        record = test_table(base, chosen, list(cfg.evaluate.methods))
        print(format_table(record), flush=True)
        print(json.dumps({"task": "omniglot", "ways": record["ways"], "shots": shots, "tasks": record["tasks"],
                          "metric": record["metric"], "methods": record["methods"],
                          "ltdi_minus": record["ltdi_minus"], "settings": record["settings"],
                          "lr_selection": chosen, "generator": record["generator"], "overrides": args.overrides,
                          "backbone": backbone, "seconds": round(time.time() - tic, 1)}), flush=True)
        for ways in args.other_ways:
            tic = time.time()
            lr = f"evaluate.ltdi_adapt_lr={chosen['ltdi_finetune']['lr']}"
            other = ltdi_ray.run("evaluate", ltdi_ray.compose(*base, f"evaluate.ways={ways}", lr))
            print(json.dumps({"task": "omniglot", "ways": ways, "shots": shots, "trained_ways": record["ways"],
                              "tasks": other["tasks"], "metric": other["metric"], "methods": other["methods"],
                              "seconds": round(time.time() - tic, 1)}), flush=True)
        with open(f"{args.root}/shots{shots}{args.tag}/results.json", "w") as fh:
            json.dump(record, fh, indent=1)  # keep the trained-N table as the run's results.json


if __name__ == "__main__":
    main()
