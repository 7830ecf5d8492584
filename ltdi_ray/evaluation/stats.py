"""The statistics of every comparison: means with 95% intervals, and paired differences per task."""

from __future__ import annotations

import math
from typing import Dict

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
