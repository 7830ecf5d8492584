"""Diagnostics of the evaluated weights beyond their scores: name -> ``fn(ev, weights) -> record``.

``weights``: every method's weights for the test episodes, by method name; the record lands in
``results.json`` under ``diagnostics``. Chosen with ``evaluate.diagnostics``.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch

from ltdi_ray.evaluation.methods import Evaluation

DIAGNOSTICS: Dict[str, Callable[[Evaluation, Dict[str, torch.Tensor]], dict]] = {}


def diagnostic(name: str) -> Callable:
    def register(fn):
        DIAGNOSTICS[name] = fn
        return fn
    return register


def _nearest(points: torch.Tensor, bank: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Distance of every row of ``points (n, D)`` to its nearest row of ``bank (N, D)``, ``(n,)``."""
    best = torch.full((points.shape[0],), float("inf"), dtype=torch.float64)
    for part in bank.split(chunk):
        best = torch.minimum(best, torch.cdist(points.double(), part.double()).min(dim=1).values)
    return best


def _summary(d: torch.Tensor) -> dict:
    return {"mean": round(float(d.mean()), 4), "median": round(float(d.median()), 4)}


@diagnostic("memorisation")
def memorisation(ev: Evaluation, weights: Dict[str, torch.Tensor]) -> dict:
    """Whether the generated weights (``ltdi``) copy or blend training checkpoints: the distance from each
    to the nearest training theta_M, against the distance from the test task's own theta_M (the
    collection's inner loop on its pool, from its theta_0) to the nearest training theta_M; distances in
    the normalised weight space, per coordinate (RMS)."""
    from ltdi_ray.pipelines.train import open_dataset
    from ltdi_ray.trajectories.batch import TrajectoryBatcher

    if "ltdi" not in weights or ev.other_ways:
        return {"skipped": "needs the ltdi method on episodes of the trained output size"}
    e, norm = ev.cfg.evaluate, ev.view.norm
    train = torch.from_numpy(open_dataset(ev.cfg).load(["checkpoints"])["checkpoints"][:, -1])
    true = TrajectoryBatcher(ev.tasks or ev.view.family, ev.gen.cfg.trajectory, e.split, e.seed, ev.view.theta0)(
        range(ev.n))["checkpoints"][:, -1]
    scale = train.shape[1] ** 0.5
    bank = norm.normalize(train)
    generated, own = norm.normalize(weights["ltdi"]), norm.normalize(torch.from_numpy(true))
    to_train_generated = _nearest(generated, bank) / scale
    to_train_true = _nearest(own, bank) / scale
    return {"space": "normalised weights, RMS per coordinate", "training_thetas": len(bank),
            "generated_to_nearest_training": _summary(to_train_generated),
            "true_to_nearest_training": _summary(to_train_true),
            "generated_to_own_true": _summary((generated - own).double().norm(dim=1) / scale),
            "ratio_of_means": round(float(to_train_generated.mean() / to_train_true.mean()), 4)}
