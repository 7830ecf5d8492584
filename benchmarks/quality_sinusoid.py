"""Quality on sinusoid regression: the whole pipeline (collect -> train -> evaluate) for 5 and 10 shots.

Prints one JSON line per setting,
``{"task": "sinusoid", "shots": K, "tasks": N, "metric": "mse", "methods": {NAME: {"mean", "ci95",
"ms_per_task"}}, "settings": {...}, "seconds": ...}``, where the methods are those of
``evaluate.methods`` (init, finetune, maml, fomaml, reptile, single_level, vanilla, ltdi,
ltdi_finetune) on ``evaluate.num_tasks`` unseen test tasks, plus ``best_of_n``: the generators
again with ``evaluate.num_samples=N`` (N candidates per task, the lowest support loss kept).
Targets (docs/design.md, section 4): ``ltdi`` (zero gradient steps) below ``maml`` (10 SGD steps), and
``ltdi`` (k >= 2) below ``vanilla`` (k = 1). Figures: docs/results/sinusoid.md.

    python benchmarks/quality_sinusoid.py [--root /tmp/ltdi_quality] [--shots 5 10] [--overrides k=v ...]
"""

from __future__ import annotations

import argparse
import json
import time

import ltdi_ray


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="/tmp/ltdi_quality", help="one run directory per setting goes under it")
    p.add_argument("--shots", type=int, nargs="+", default=[5, 10])
    p.add_argument("--overrides", nargs="*", default=[], help="extra config overrides (key=value)")
    p.add_argument("--best-of", type=int, default=16, help="candidates per task for the best_of_n rows")
    args = p.parse_args()
    for shots in args.shots:
        tic = time.time()
        base = [f"task.shots={shots}", f"storage.uri={args.root}/shots{shots}", *args.overrides]
        summary = ltdi_ray.run("pipeline", ltdi_ray.compose(*base))
        with open(summary["uri"]) as fh:
            record = json.load(fh)
        many = ltdi_ray.compose(*base, f"evaluate.num_samples={args.best_of}",
                                "evaluate.methods=[vanilla,ltdi,ltdi_finetune]")
        best_of = ltdi_ray.run("evaluate", many)["methods"]
        with open(summary["uri"], "w") as fh:  # keep the main table as the run's results.json
            json.dump(record, fh, indent=1)
        print(json.dumps({"task": "sinusoid", "shots": shots, "tasks": record["tasks"], "metric": record["metric"],
                          "methods": record["methods"], "ltdi_minus": record["ltdi_minus"],
                          f"best_of_{args.best_of}": best_of,
                          "settings": record["settings"],
                          "generator": record["generator"], "overrides": args.overrides,
                          "seconds": round(time.time() - tic, 1)}), flush=True)


if __name__ == "__main__":
    main()
