"""From per-task scores to the comparison: ``results.json`` and the table the evaluate stage prints.

    record = make_record(header, per_task, seconds, settings)   # means, intervals, paired differences
    print(format_table(record))
"""

from __future__ import annotations

import json
from typing import Dict

import torch

from ltdi_ray.evaluation.stats import mean_ci, paired_differences


def make_record(header: dict, per_task: Dict[str, torch.Tensor], seconds: Dict[str, float],
                settings: Dict[str, dict]) -> dict:
    """The results record: ``header`` (task, split, tasks, metric, shots, ways, generator...), every
    method's mean, 95% CI and milliseconds per task, the generator's paired differences and every
    method's per-task scores (in task order)."""
    methods = {name: {**mean_ci(v), "ms_per_task": 1000.0 * seconds[name] / len(v)} for name, v in per_task.items()}
    return {**header, "methods": methods, "ltdi_minus": paired_differences(per_task), "settings": settings,
            "per_task": {k: torch.as_tensor(v).tolist() for k, v in per_task.items()}}


def format_table(record: dict) -> str:
    """The results as a fixed-width text table."""
    ways = f"{record['ways']}-way " if record.get("ways") else ""
    seed = f" (seed {record['seed']})" if "seed" in record else ""
    changes = "".join(f", {k}={v}" for k, v in record.get("task_changes", {}).items())
    head = (f"{record['task']} {ways}{record['shots']}-shot, {record['tasks']} {record['split']} tasks{seed}{changes}, "
            f"query {record['metric']}")
    lines = [head, f"{'method':<15}{'mean':>10}{'ci95':>10}{'ms/task':>10}"]
    for name, r in record["methods"].items():
        lines.append(f"{name:<15}{r['mean']:>10.4f}{r['ci95']:>10.4f}{r['ms_per_task']:>10.3f}")
    if record.get("ltdi_minus"):
        pairs = ", ".join(f"{name} {d['mean']:+.4f} +- {d['ci95']:.4f}" for name, d in record["ltdi_minus"].items())
        lines.append(f"ltdi minus, per task: {pairs}")
    for name, s in {**record["settings"], **record.get("diagnostics", {})}.items():
        lines.append(f"  {name}: {json.dumps(s, sort_keys=True)}")
    return "\n".join(lines)
