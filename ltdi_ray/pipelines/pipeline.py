"""The pipeline stage: prepare -> collect -> train -> evaluate with one config (the main job)."""

from __future__ import annotations

import time

from ltdi_ray.config.schema import Config
from ltdi_ray.pipelines.collect import run_collect
from ltdi_ray.pipelines.evaluate import run_evaluate
from ltdi_ray.pipelines.prepare import prepare
from ltdi_ray.pipelines.train import run_train


def run_pipeline(cfg: Config) -> dict:
    """Run the three stages; each resumes or skips what a previous run finished.

    Returns ``{"stage", "uri" (results.json), "generator_uri", "collect", "train", "evaluate"}``.
    """
    tic = time.time()
    cfg = prepare(cfg)
    collected = run_collect(cfg)
    trained = run_train(cfg)
    evaluated = run_evaluate(cfg)
    return {"stage": "pipeline", "uri": evaluated["uri"], "generator_uri": trained["generator_uri"],
            "seconds": round(time.time() - tic, 2),
            "collect": {k: collected[k] for k in ("uri", "tasks", "seconds")},
            "train": {k: trained[k] for k in ("uri", "epochs", "val_metric", "tasks_per_s", "seconds")},
            "evaluate": evaluated["methods"]}
