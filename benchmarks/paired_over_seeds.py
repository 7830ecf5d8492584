"""The comparison over seeds of a finished protocol run, against any of its methods.

The quality benchmarks compare every method with ``ltdi``, the generator the run's config trained. When
a family's default generator changes to one of the controls (sinusoid: ``hypernet``, chosen on
validation tasks), its figures are already in the run's records: this reads every seed's
``results_<table>.json``, renames methods (``--rename ltdi=bridge_k3``: what the run's generator was)
and prints one JSON line with ``ltdi_ray.evaluation.stats.over_seeds`` against ``--of``: mean and spread
over seeds, ``--of`` minus every method per seed and pooled, and the verdict. No training, no Ray.
Figures: docs/results/sinusoid.md.

    python benchmarks/paired_over_seeds.py /tmp/ltdi_q23/shots5/seed*/results_grid.json --of hypernet \
        --rename ltdi=bridge_k3
"""

from __future__ import annotations

import argparse
import json

import torch

from ltdi_ray.evaluation.stats import over_seeds
from ltdi_ray.tasks import family_class


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("records", nargs="+", help="one results.json per training seed, the same tasks in each")
    p.add_argument("--of", default="ltdi", help="the method every other one is compared with")
    p.add_argument("--rename", nargs="*", default=[], help="old=new method names")
    args = p.parse_args()
    names = dict(pair.split("=", 1) for pair in args.rename)
    per_seed, ids = [], None
    for path in args.records:
        with open(path) as fh:
            record = json.load(fh)
        if ids is not None and record["task_ids"] != ids:
            raise SystemExit(f"error: {path} scores other tasks than {args.records[0]}")
        ids = record["task_ids"]
        higher = family_class(record["task"]).higher_is_better
        per_seed.append({names.get(m, m): torch.tensor(v) for m, v in record["per_task"].items()})
    if args.of not in per_seed[0]:
        raise SystemExit(f"error: --of {args.of} is not among the methods {sorted(per_seed[0])}")
    print(json.dumps({"records": args.records, "of": args.of, "split": record["split"], "eval_seed": record["seed"],
                      "tasks": record["tasks"], "metric": record["metric"],
                      **over_seeds(per_seed, of=args.of, higher_is_better=higher)}))


if __name__ == "__main__":
    main()
