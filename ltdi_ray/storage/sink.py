"""Writing collector output: each block becomes one atomically published Parquet file.

The writer runs as a small pool of long-lived Ray Data actors after the collectors rather
than as ``write_parquet``/``Datasink`` tasks: a write task is a fresh worker process whenever
the collectors fill the node's CPU slots, and on a 2-core machine those process starts cost
about 40% of a core (measured). Actors keep encoding and upload off the collectors (and off
the GPU) without that cost. Unlike ``write_parquet``, a file is never visible half-written and
its name is a function of its task ids, so a retried block replaces its own file.
"""

from __future__ import annotations

from typing import List

import numpy as np
import pyarrow as pa

from ltdi_ray.storage.artifact import PartSummary, write_part
from ltdi_ray.storage.fs import Location

_FIELDS = ("name", "rows", "size", "sha256", "task_ids", "ckpt_sum", "ckpt_sumsq", "ckpt_count")


class PartWriter:
    """Ray Data actor: a block of trajectory rows in, one summary row per written file out."""

    def __init__(self, data_dir: Location):
        self.data_dir = data_dir

    def __call__(self, block: pa.Table) -> pa.Table:
        if block.num_rows == 0:
            return pa.table({k: pa.array([], type=pa.null()) for k in _FIELDS})
        s = write_part(self.data_dir, block)
        return pa.table({"name": [s.name], "rows": [s.rows], "size": [s.size], "sha256": [s.sha256],
                         "task_ids": [s.task_ids.tolist()], "ckpt_sum": [s.ckpt_sum.tolist()],
                         "ckpt_sumsq": [s.ckpt_sumsq.tolist()], "ckpt_count": [s.ckpt_count]})


def summaries_from_rows(rows: List[dict]) -> List[PartSummary]:
    """Rebuild :class:`PartSummary` objects from the writer's output rows."""
    return [PartSummary(r["name"], int(r["rows"]), int(r["size"]), r["sha256"], np.asarray(r["task_ids"], np.int64),
                        np.asarray(r["ckpt_sum"], np.float64), np.asarray(r["ckpt_sumsq"], np.float64),
                        int(r["ckpt_count"])) for r in rows if r["name"] is not None]
