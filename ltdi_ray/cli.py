"""``python -m ltdi_ray <stage> [key=value ...]``: parse, compose the config, run the stage.

Progress goes to stderr; the last stdout line is a one-line JSON summary for scripts. A user
error prints one line naming the culprit and exits with status 2, without a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Callable, Dict, List, Optional

from ltdi_ray.config.compose import load_config, overrides_from_argv
from ltdi_ray.errors import LtdiError


def _stages() -> Dict[str, Callable]:
    from ltdi_ray.pipelines.backbone import run_backbone
    from ltdi_ray.pipelines.collect import run_collect
    from ltdi_ray.pipelines.evaluate import run_evaluate
    from ltdi_ray.pipelines.pipeline import run_pipeline
    from ltdi_ray.pipelines.plot import run_plot
    from ltdi_ray.pipelines.train import run_train
    from ltdi_ray.pipelines.tune import run_tune

    return {"backbone": run_backbone, "collect": run_collect, "train": run_train, "evaluate": run_evaluate, "pipeline": run_pipeline,
            "tune": run_tune, "plot": run_plot}


USAGE = "usage: python -m ltdi_ray <stage> [RUN_URI] [key=value ...]   stages: {stages}"


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    stages = _stages()
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE.format(stages=", ".join(stages)))
        sys.exit(0 if argv else 2)
    stage, overrides = argv[0], argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        if stage not in stages:
            raise LtdiError(f"unknown stage {stage!r}; choose one of: {', '.join(stages)}")
        cfg = load_config(overrides_from_argv(overrides))
        summary = stages[stage](cfg)
    except LtdiError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted; re-run the same command to resume", file=sys.stderr)
        sys.exit(130)
    print(json.dumps(summary, sort_keys=False), flush=True)
