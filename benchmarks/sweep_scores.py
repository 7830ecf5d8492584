"""Score a finished sweep's best trial per (variant, k) on more validation tasks, with confidence intervals.

The sweep ranks trials on ``train.val_tasks`` validation tasks; this takes, for every diffusion
variant and segment count k, the trial with the best final validation metric, loads its last
checkpoint with ``load_generator`` and scores its generated weights (zero gradient steps, the
trial's own sampler settings) on ``--tasks`` validation tasks of ``--seed`` (by default
``evaluate.seed``, not the seed the sweep validated on), the same tasks for every trial. A sweep is
development: its scores choose settings, so they never touch test tasks (docs/results/protocol.md). Prints one
JSON line per trial (mean, 95% CI, median, epochs trained, params) and then one line per variant
with the paired difference of every k against k = 1 on the same tasks (mean and 95% CI), both from
``ltdi_ray.evaluation.stats`` (as the evaluate stage's tables). Figures: docs/results/sweeps.md.

    python benchmarks/sweep_scores.py /tmp/ltdi_quality/shots5/tune/sweep [--tasks 600]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import ltdi_ray
from ltdi_ray.config.method import EvaluateConfig
from ltdi_ray.evaluation.stats import mean_ci
from ltdi_ray.tasks.episodes import support_of


def best_trials(sweep: Path) -> dict:
    """``{(variant, k): row}``: the trial with the best final metric for each variant and k."""
    table = json.loads((sweep / "trials.json").read_text())
    sign = 1 if table["mode"] == "min" else -1
    best: dict = {}
    for row in table["trials"]:
        if row[table["metric"]] is None:
            continue
        key = (row["params"]["diffusion.variant"], row["params"]["diffusion.segments"])
        if key not in best or sign * row[table["metric"]] < sign * best[key][table["metric"]]:
            best[key] = row
    return best


def last_checkpoint(sweep: Path, trial: str) -> Path:
    trial_id = re.search(r"run_trial_([0-9a-f]+_\d+)", trial).group(1)
    run = sweep / "runs" / f"trial-{trial_id}"
    return max(p for p in run.glob("checkpoint_*") if p.is_dir())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep", type=Path, help="<storage.uri>/tune/<tune.name>")
    p.add_argument("--tasks", type=int, default=600)
    p.add_argument("--seed", type=int, default=EvaluateConfig.seed, help="base seed of the scored validation tasks")
    args = p.parse_args()
    scores = {}
    for (variant, k), row in sorted(best_trials(args.sweep).items()):
        gen = ltdi_ray.load_generator(str(last_checkpoint(args.sweep, row["trial"])))
        val = gen.family.sample_many("val", range(args.tasks), args.seed)
        sx, sy = support_of(val, gen.family, raw=True)
        metric = gen.query_metric(gen.generate_batch(sx, sy, seed=0), val)
        scores[(variant, k)] = metric
        stats = mean_ci(metric)
        print(json.dumps({"variant": variant, "k": k, "params": row["params"], "epochs": row["epochs"],
                          "val_metric": round(row["val_metric"], 4), "val_mean": round(stats["mean"], 4),
                          "val_ci95": round(stats["ci95"], 4), "val_median": round(float(metric.median()), 4)}),
              flush=True)
    for variant in sorted({v for v, _ in scores}):
        if (variant, 1) not in scores:
            continue
        base = scores[(variant, 1)]
        diffs = {k: mean_ci(scores[(v, k)] - base) for v, k in scores if v == variant and k != 1}  # k minus k = 1
        print(json.dumps({"variant": variant, "paired_vs_k1": {
            k: {"mean": round(d["mean"], 4), "ci95": round(d["ci95"], 4)} for k, d in sorted(diffs.items())}}),
            flush=True)


if __name__ == "__main__":
    main()
