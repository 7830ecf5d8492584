"""``python -m ltdi_ray <stage> [RUN_URI] [key=value ...]``: parse, compose the config, run the stage.

Progress goes to stderr; the last stdout line is a one-line JSON summary for scripts. A user
error prints one line naming the culprit and exits with status 2, without a traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import List, Optional

from ltdi_ray import jsonline
from ltdi_ray.errors import LtdiError
from ltdi_ray.stages import STAGES

USAGE = "usage: python -m ltdi_ray <stage> [RUN_URI] [key=value ...]   stages: {stages}"


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE.format(stages=", ".join(STAGES)))
        sys.exit(0 if argv else 2)
    name, overrides = argv[0], argv[1:]
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("ltdi_ray").setLevel(logging.INFO)  # its own level: Ray quiets the root logger
    try:
        from ltdi_ray.config.compose import load_config, overrides_from_argv
        from ltdi_ray.stages import stage

        run = stage(name)
        summary = run(load_config(overrides_from_argv(overrides)))
    except LtdiError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted; re-run the same command to resume", file=sys.stderr)
        sys.exit(130)
    print(jsonline.dumps(summary), flush=True)
