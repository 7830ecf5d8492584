"""The statistics of every comparison: means with 95% intervals, and paired differences per task."""

from __future__ import annotations

import math
from typing import Dict, List

import torch


def mean_ci(values: torch.Tensor) -> Dict[str, float]:
    """Mean and 95% CI half-width (normal approximation) of ``values (n,)``."""
    v = torch.as_tensor(values).double()
    return {"mean": float(v.mean()), "ci95": 1.96 * float(v.std(unbiased=True)) / math.sqrt(len(v))}


def paired_differences(per_task: Dict[str, torch.Tensor], of: str = "ltdi") -> Dict[str, dict]:
    """``of``'s per-task metric minus every other method's on the same tasks: mean and 95% CI half-width
    of the paired difference (tighter than comparing two means' intervals, because each task's
    difficulty cancels). ``per_task``: name -> ``(n,)``."""
    if of not in per_task:
        return {}
    return {name: mean_ci(torch.as_tensor(per_task[of]) - torch.as_tensor(v))
            for name, v in per_task.items() if name != of}


def over_seeds(per_seed: List[Dict[str, torch.Tensor]], of: str = "ltdi", higher_is_better: bool = False) -> dict:
    """A comparison over training seeds: ``per_seed[s]`` maps method -> per-task metric ``(n,)`` on the same
    tasks. For every method: the mean over seeds of its mean, the spread (sample standard deviation over
    seeds, min, max); for every other method, ``of`` minus it per seed (mean and 95% CI over tasks), pooled
    (per task, the difference averaged over seeds; mean and 95% CI over tasks) and the verdict: ``of`` is
    ahead (or behind) where it is on every seed or the pooled interval excludes 0, else level."""
    names = [m for m in per_seed[0] if all(m in r for r in per_seed)]
    methods = {}
    for m in names:
        means = torch.tensor([float(torch.as_tensor(r[m]).double().mean()) for r in per_seed], dtype=torch.float64)
        spread = float(means.std(unbiased=True)) if len(means) > 1 else 0.0
        methods[m] = {"mean": float(means.mean()), "sd_over_seeds": spread, "min": float(means.min()),
                      "max": float(means.max()), "per_seed": means.tolist()}
    paired = {}
    sign = 1.0 if higher_is_better else -1.0  # > 0: `of` is better
    for m in names if of in names else []:
        if m == of:
            continue
        diffs = [torch.as_tensor(r[of]).double() - torch.as_tensor(r[m]).double() for r in per_seed]
        seeds = [mean_ci(d) for d in diffs]
        pooled = mean_ci(torch.stack(diffs).mean(0))
        better = [sign * d["mean"] > 0 for d in seeds]
        excludes = abs(pooled["mean"]) > pooled["ci95"]
        if all(better) or (excludes and sign * pooled["mean"] > 0):
            verdict = "ahead"
        elif not any(better) or (excludes and sign * pooled["mean"] < 0):
            verdict = "behind"
        else:
            verdict = "level"
        paired[m] = {"per_seed": seeds, "pooled": pooled, "verdict": verdict}
    return {"seeds": len(per_seed), "methods": methods, f"{of}_minus": paired}
