"""Quality on Omniglot-242 few-shot classification: the whole pipeline for 5-way 1-shot and 5-shot.

For each shot count it runs ``python -m ltdi_ray pipeline`` (backbone -> collect -> train -> evaluate)
with ``task=omniglot`` and prints one JSON line,
``{"task": "omniglot", "ways": N, "shots": K, "tasks": 600, "metric": "accuracy", "methods": {NAME: {"mean",
"ci95", "ms_per_task"}}, "settings": {...}, "seconds": ...}``, NAME in init, finetune, maml, fomaml, reptile,
protonet, single_level, vanilla, ltdi, ltdi_finetune (query accuracy in [0, 1] on unseen test characters).
Then the same generator on ``--other-ways`` episodes (trained on 5-way; the baselines meta-trained
for 5 ways are skipped there), one JSON line each.

    python benchmarks/quality_omniglot.py --data ../shared/data/omniglot [--shots 1 5] [--overrides k=v ...]
"""

from __future__ import annotations

import argparse
import json
import time

from ltdi_ray.config import load_config
from ltdi_ray.pipelines.evaluate import run_evaluate
from ltdi_ray.pipelines.pipeline import run_pipeline

# the benchmark scale on a 2-core CPU: 10,000 training episodes per setting, the tiny denoiser (on
# 33-number class rows it matches `small` at equal time, 10x faster: README "Omniglot")
SCALE = ["task=omniglot", "task.generate=head", "collect.num_tasks=10000", "model.preset=tiny"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the Omniglot archives (task.root)")
    p.add_argument("--root", default="/tmp/ltdi_omniglot", help="one run directory per setting goes under it")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--other-ways", type=int, nargs="*", default=[10, 20])
    p.add_argument("--overrides", nargs="*", default=[], help="extra config overrides (key=value)")
    args = p.parse_args()
    for shots in args.shots:
        tic = time.time()
        base = [*SCALE, f"task.root={args.data}", f"task.shots={shots}", f"storage.uri={args.root}/shots{shots}",
                *args.overrides]
        summary = run_pipeline(load_config(base))
        with open(summary["uri"]) as fh:
            record = json.load(fh)
        print(json.dumps({"task": "omniglot", "ways": record["ways"], "shots": shots, "tasks": record["tasks"],
                          "metric": record["metric"], "methods": record["methods"], "settings": record["settings"],
                          "generator": record["generator"], "overrides": args.overrides,
                          "seconds": round(time.time() - tic, 1)}), flush=True)
        for ways in args.other_ways:
            tic = time.time()
            other = run_evaluate(load_config([*base, f"evaluate.ways={ways}"]))
            print(json.dumps({"task": "omniglot", "ways": ways, "shots": shots, "trained_ways": record["ways"],
                              "tasks": other["tasks"], "metric": other["metric"], "methods": other["methods"],
                              "seconds": round(time.time() - tic, 1)}), flush=True)
        with open(summary["uri"], "w") as fh:  # keep the trained-N table as the run's results.json
            json.dump(record, fh, indent=1)


if __name__ == "__main__":
    main()
