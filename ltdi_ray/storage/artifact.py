"""The trajectory dataset artifact (docs/design.md 3.2).

Layout under a dataset URI::

    _collect.json              the collection config, written first: refuses mixing configs
    data/part-<first>-<n>-<hash>.parquet   one row per task, each file written atomically
    _norm_stats.safetensors    per-coordinate mean/std of the trajectory checkpoints
    _manifest.json             written last: its presence means "complete"

Array columns are Arrow fixed-size lists of the flattened array; their per-row shapes are in
the manifest's ``schema``, so any Parquet reader can use the files and nothing is pickled.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ltdi_ray.errors import DataError
from ltdi_ray.storage.fs import Location

FORMAT = "ltdi_ray.trajectories"
FORMAT_VERSION = 1
MANIFEST, INTENT, NORM_STATS, DATA_DIR = "_manifest.json", "_collect.json", "_norm_stats.safetensors", "data"
MANIFEST_KEYS = ("format", "format_version", "num_tasks", "num_files", "param_spec", "num_checkpoints", "steps",
                 "theta0", "config", "schema", "norm_stats", "files")  # every key readers use

ColumnSchema = Dict[str, dict]  # name -> {"dtype": str, "shape": [per-row shape]}


def arrays_to_table(arrays: Dict[str, np.ndarray]) -> pa.Table:
    """Arrays ``(B, *shape)`` -> Arrow table; non-scalar rows become fixed-size lists."""
    columns = {}
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        if arr.ndim == 1:
            columns[name] = pa.array(arr)
        else:
            width = int(np.prod(arr.shape[1:]))
            columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), width)
    return pa.table(columns)


def table_to_arrays(table: pa.Table, schema: ColumnSchema, columns: Optional[List[str]] = None) -> Dict[str, np.ndarray]:
    """Inverse of :func:`arrays_to_table`: ``(B, *shape)`` arrays shaped by ``schema``."""
    out = {}
    for name in columns or list(schema):
        col = table.column(name).combine_chunks()
        spec = schema[name]
        if spec["dtype"] == "string":
            out[name] = np.array(col.to_pylist(), dtype=object)
        elif spec["shape"]:
            values = col.values.to_numpy(zero_copy_only=False)
            out[name] = values.reshape(len(col), *spec["shape"]).astype(spec["dtype"], copy=False)
        else:
            out[name] = col.to_numpy(zero_copy_only=False).astype(spec["dtype"], copy=False)
    return out


@dataclass
class PartSummary:
    """What the manifest needs from one data file, computed where the file is written."""

    name: str
    rows: int
    size: int
    sha256: str
    task_ids: np.ndarray  # (rows,) int64
    ckpt_sum: np.ndarray  # (D,) float64: sum over rows and checkpoints 1..C-1
    ckpt_sumsq: np.ndarray  # (D,) float64
    ckpt_count: int

    def record(self) -> dict:
        return {"path": f"{DATA_DIR}/{self.name}", "rows": self.rows, "bytes": self.size, "sha256": self.sha256,
                "first_task": int(self.task_ids.min()), "last_task": int(self.task_ids.max())}


def part_name(task_ids: np.ndarray) -> str:
    """Deterministic in the task ids, so a retried write replaces its own file."""
    digest = hashlib.blake2b(np.sort(task_ids).astype("<i8").tobytes(), digest_size=4).hexdigest()
    return f"part-{int(task_ids.min()):09d}-{len(task_ids):06d}-{digest}.parquet"


def summarise_part(name: str, data: bytes, table: pa.Table) -> PartSummary:
    """Checksum and streaming statistics of one data file's contents."""
    ckpt = table.column("checkpoints").combine_chunks()
    n, num_ckpt = len(ckpt), int(table.column("steps").type.list_size)
    flat = ckpt.values.to_numpy(zero_copy_only=False).reshape(n, num_ckpt, -1)
    return PartSummary(name, n, len(data), hashlib.sha256(data).hexdigest(), table.column("task_id").to_numpy(),
                       *checkpoint_moments(flat))


def checkpoint_moments(checkpoints: np.ndarray) -> Tuple[np.ndarray, np.ndarray, int]:
    """Per-coordinate sum and sum of squares ``(D,)`` float64, and the count, of checkpoints
    1..C-1 of ``checkpoints (n, C, D)`` (theta_0 is no target)."""
    targets = checkpoints[:, 1:].reshape(-1, checkpoints.shape[-1]).astype(np.float64)
    return targets.sum(0), np.square(targets).sum(0), len(targets)


def write_part(data_dir: Location, table: pa.Table) -> PartSummary:
    """Serialise ``table`` to Parquet and make it appear atomically under ``data_dir``."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    data = buf.getvalue()
    name = part_name(table.column("task_id").to_numpy())
    data_dir.write_atomic(name, data)
    return summarise_part(name, data, table)


def read_part(data_dir: Location, name: str, expect_sha256: Optional[str] = None) -> Tuple[bytes, pa.Table]:
    """Read one data file; a missing, torn or tampered file raises :class:`DataError` naming it."""
    where = data_dir.child(name)
    try:
        data = data_dir.read_bytes(name)
    except FileNotFoundError:
        raise DataError(f"trajectory file {where} is missing") from None
    if expect_sha256 is not None and hashlib.sha256(data).hexdigest() != expect_sha256:
        raise DataError(f"trajectory file {where} fails its checksum (expected sha256 {expect_sha256[:12]}...)")
    try:
        return data, pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"trajectory file {where} is not readable Parquet (torn or corrupt): {err}") from None


def write_json(loc: Location, name: str, obj: dict) -> None:
    loc.write_atomic(name, json.dumps(obj, indent=2, sort_keys=True).encode())


def read_json(loc: Location, name: str, required: Tuple[str, ...] = ()) -> Optional[dict]:
    """The JSON object ``name`` under ``loc``, or None when absent; one that is not an object holding the
    ``required`` keys (malformed, or another tool's file of that name) is a :class:`DataError` naming it."""
    try:
        raw = loc.read_bytes(name)
    except FileNotFoundError:
        return None
    try:
        record = json.loads(raw)
    except ValueError as err:
        raise DataError(f"{loc.child(name)} is not valid JSON: {err}") from None
    check_record(record, required, loc.child(name))
    return record


def check_record(record, required: Tuple[str, ...], where) -> None:
    """Refuse a JSON record that is not an object with the ``required`` keys, naming ``where`` it came from."""
    if not isinstance(record, dict):
        raise DataError(f"{where} is not an ltdi_ray record: a JSON {type(record).__name__}, not an object")
    missing = [k for k in required if k not in record]
    if missing:
        raise DataError(f"{where} is not an ltdi_ray record of this kind: it lacks {', '.join(missing)}")


def merge_stats(parts: List[PartSummary]) -> Tuple[np.ndarray, np.ndarray, int]:
    """Per-coordinate mean and std ``(D,)`` float32 over every part's checkpoints 1..C-1."""
    return stats_from_moments(np.sum([p.ckpt_sum for p in parts], axis=0),
                              np.sum([p.ckpt_sumsq for p in parts], axis=0), sum(p.ckpt_count for p in parts))


def stats_from_moments(total: np.ndarray, total_sq: np.ndarray, count: int) -> Tuple[np.ndarray, np.ndarray, int]:
    """Mean and std ``(D,)`` float32 (and the count) from :func:`checkpoint_moments`' sums."""
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean.astype(np.float32), std.astype(np.float32), count


def write_norm_stats(loc: Location, mean: np.ndarray, std: np.ndarray) -> str:
    """Save the statistics as safetensors; returns their sha256."""
    from safetensors.numpy import save

    data = save({"mean": mean, "std": std})
    loc.write_atomic(NORM_STATS, data)
    return hashlib.sha256(data).hexdigest()


def read_norm_stats(loc: Location, expect_sha256: str) -> Dict[str, np.ndarray]:
    """The statistics the manifest names (``expect_sha256``: its checksum of them), checked finite (a zero std
    is fine: the normaliser floors it)."""
    from safetensors.numpy import load

    where = loc.child(NORM_STATS)
    try:
        data = loc.read_bytes(NORM_STATS)
    except FileNotFoundError:
        raise DataError(f"normalisation statistics {where} are missing") from None
    if hashlib.sha256(data).hexdigest() != expect_sha256:
        raise DataError(f"normalisation statistics {where} fail the manifest's checksum (sha256 {expect_sha256[:12]}...)")
    try:
        stats = load(data)
    except Exception as err:  # safetensors raises its own types for a corrupt header
        raise DataError(f"normalisation statistics {where} are not readable safetensors: {err}") from None
    if set(stats) != {"mean", "std"} or not all(np.isfinite(v).all() for v in stats.values()):
        raise DataError(f"normalisation statistics {where} must hold finite 'mean' and 'std', got {sorted(stats)}")
    return stats
