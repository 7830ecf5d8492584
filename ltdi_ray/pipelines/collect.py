"""The collect stage: task ids -> batched inner loops on Ray Data actors -> Parquet + manifest.

Idempotent and resumable: the dataset directory records the config it was started with; a
re-run keeps every readable data file, removes torn ones, collects only the missing task ids
and writes the manifest last. A complete dataset makes a re-run a no-op.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Dict, Iterator, List, Optional

import numpy as np
import pyarrow as pa

from ltdi_ray import __version__
from ltdi_ray.base_nets.paramspec import ParamSpec
from ltdi_ray.config.checks import check_memory
from ltdi_ray.config.compose import config_changes, to_plain
from ltdi_ray.config.schema import Config
from ltdi_ray.errors import ConfigError, DataError
from ltdi_ray.pipelines.prepare import prepare
from ltdi_ray.progress import progress
from ltdi_ray.storage.artifact import (
    DATA_DIR,
    FORMAT,
    FORMAT_VERSION,
    INTENT,
    MANIFEST,
    MANIFEST_KEYS,
    PartSummary,
    arrays_to_table,
    merge_stats,
    read_json,
    read_part,
    summarise_part,
    write_json,
    write_norm_stats,
)
from ltdi_ray.storage.fs import Location
from ltdi_ray.storage.lease import Lease, writer_lease
from ltdi_ray.tasks import make_family
from ltdi_ray.trajectories.batch import TrajectoryBatcher
from ltdi_ray.trajectories.theta0 import FILE as START_FILE
from ltdi_ray.trajectories.theta0 import ensure_stored, theta0_of

log = logging.getLogger("ltdi_ray")


def make_batcher(cfg: Config, device: str = "cpu", shared: Optional["torch.Tensor"] = None) -> TrajectoryBatcher:  # noqa: F821
    """The plain-torch batch collector for ``cfg`` (used in-process by tests and benchmarks); ``shared``
    ``(D,)``: the shared theta_0 (a dataset's stored start, a generator's ``theta0.shared``), computed from
    ``cfg`` when not given (``reptile``: meta-trained here)."""
    family = make_family(cfg.task, cfg.storage.endpoint_url)
    return TrajectoryBatcher(family, cfg.trajectory, cfg.collect.split, cfg.collect.seed,
                             theta0_of(cfg, family, shared), device, cfg.collect.chunk_mb)


class TrajectoryCollector:
    """Ray Data actor: owns the device and the batched inner loop; ids in, Arrow rows out."""

    def __init__(self, cfg: Config, num_threads: int, use_gpu: bool, stored: Optional[np.ndarray]):
        import torch

        torch.set_num_threads(num_threads)
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        shared = None if stored is None else torch.from_numpy(stored.copy())  # object-store arrays are read-only
        self.batcher = make_batcher(cfg, device, shared)
        self.family, self.split = cfg.task.family, cfg.collect.split

    def __call__(self, batch: Dict[str, np.ndarray]) -> Iterator[pa.Table]:
        for rows in self.batcher.chunks(batch["id"]):  # one table per chunk: a call's peak is one chunk's
            n = len(rows["task_id"])
            table = arrays_to_table(rows)
            yield table.append_column("family", pa.array([self.family] * n)).append_column("split", pa.array([self.split] * n))


def fingerprint(cfg: Config) -> dict:
    """Everything that determines the rows' contents (not how the work is spread)."""
    out = {"format_version": FORMAT_VERSION, "task": to_plain(cfg.task), "trajectory": to_plain(cfg.trajectory),
           "split": cfg.collect.split, "seed": cfg.collect.seed}
    if cfg.trajectory.theta0 == "reptile":  # only then: a shared start's datasets do not depend on it
        out["reptile_start"] = to_plain(cfg.reptile_start)
    return out


def _claim(loc: Location, cfg: Config) -> None:
    """Record this collection's config, or refuse to mix with a dataset made under another one. A claim with
    no data file yet (a run that failed before writing one: absurd sizes, out of memory) holds nothing to mix
    with, so the corrected command replaces it."""
    want = {"fingerprint": fingerprint(cfg), "num_tasks": cfg.collect.num_tasks}
    have = read_json(loc, INTENT, ("fingerprint", "num_tasks"))
    listing = loc.list(DATA_DIR)
    if have is None or not any(name.startswith("part-") for name in listing):
        if have is None and listing:
            raise DataError(f"{loc.child(DATA_DIR)} holds files but no {INTENT}: not an ltdi_ray dataset; "
                            "choose another storage.uri")
        if have is not None and have.get("fingerprint") != want["fingerprint"] and loc.exists(START_FILE):
            loc.remove(START_FILE)  # the failed run's theta_0 was made under its config
        write_json(loc, INTENT, want)
        return
    changes = config_changes(have["fingerprint"], want["fingerprint"])
    if changes:
        raise ConfigError(f"the dataset at {loc} was collected with another config ({'; '.join(changes[:3])}); "
                          "refusing to mix: pass a new storage.uri or restore the old values")
    if cfg.collect.num_tasks < have["num_tasks"]:
        raise ConfigError(f"collect.num_tasks={cfg.collect.num_tasks} but the dataset at {loc} was started with "
                          f"{have['num_tasks']} tasks; use collect.num_tasks>={have['num_tasks']} or a new storage.uri")
    if cfg.collect.num_tasks > have["num_tasks"]:
        write_json(loc, INTENT, want)


def _scan_existing(loc: Location) -> List[PartSummary]:
    """Summaries of the readable data files already present; torn leftovers are removed."""
    data_dir, parts = loc.child(DATA_DIR), []
    for name in data_dir.list():
        if not name.startswith("part-"):
            if name.startswith(".tmp-"):
                data_dir.remove(name)  # an interrupted local write: never published
            continue
        try:
            data, table = read_part(data_dir, name)
        except DataError as err:
            log.warning("collect: removing unreadable %s (%s); its tasks will be collected again", name, err)
            data_dir.remove(name)
            continue
        parts.append(summarise_part(name, data, table))
    return parts


def _collect_missing(cfg: Config, loc: Location, missing: np.ndarray, stored: Optional[np.ndarray]) -> List[PartSummary]:
    import ray

    from ltdi_ray.pipelines.placement import ensure_placeable, how_many, node_resources
    from ltdi_ray.pipelines.runtime import ensure_ray, user_errors_from_ray
    from ltdi_ray.storage.sink import PartWriter, summaries_from_rows

    c = cfg.collect
    ensure_ray(cfg.ray, cfg.verbose)
    actor = {"CPU": c.cpus_per_actor, **({"GPU": c.gpus_per_actor} if c.gpus_per_actor > 0 else {})}
    actors = min(c.num_actors or max(1, how_many(actor, node_resources())), math.ceil(len(missing) / c.batch_size))
    ensure_placeable([actor] * actors, f"collect ({actors} collector actor(s))", "lower collect.cpus_per_actor, "
                     "collect.gpus_per_actor or collect.num_actors, or run on a larger cluster", cfg.ray.placement_timeout_s)
    log.info("collect: %d tasks to collect on %d actor(s), %d tasks per batch", len(missing), actors, c.batch_size)
    # Blocks of missing task ids, one per collector call, made on the driver: a `range` read
    # would need CPU slots that the actor pool holds (a hang, docs/ray-notes.md 0.4) or a separate
    # materialising pass, and resuming needs the list of missing ids anyway.
    blocks = [pa.table({"id": ids}) for ids in np.split(missing, range(c.batch_size, len(missing), c.batch_size))]
    ds = ray.data.from_blocks(blocks).map_batches(
        TrajectoryCollector, batch_size=c.batch_size, batch_format="numpy",
        fn_constructor_kwargs={"cfg": cfg, "num_threads": max(1, int(c.cpus_per_actor)),
                               "use_gpu": c.gpus_per_actor > 0, "stored": stored},
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=c.cpus_per_actor, num_gpus=c.gpus_per_actor)
    # Writers ask for no CPU slot: a collector pool that fills the cluster cannot starve them.
    ds = ds.map_batches(PartWriter, batch_size=None, batch_format="pyarrow",
                        fn_constructor_kwargs={"data_dir": loc.child(DATA_DIR)},
                        compute=ray.data.ActorPoolStrategy(size=c.num_writers or max(1, actors // 4)), num_cpus=0)
    rows = []
    with user_errors_from_ray(), progress(total=len(missing), desc="collect", unit="task") as bar:
        for row in ds.iter_rows():  # one per written file
            rows.append(row)
            bar.update(int(row["rows"] or 0))
    return summaries_from_rows(rows)


def _finalise(loc: Location, cfg: Config, parts: List[PartSummary], spec: ParamSpec, family_info: dict,
              schema: dict, start_entry: dict) -> dict:
    ids = np.concatenate([p.task_ids for p in parts])
    if len(np.unique(ids)) != len(ids):
        raise DataError(f"duplicate task ids across the data files of {loc}; the dataset is corrupt")
    expected = cfg.collect.num_tasks
    if len(ids) != expected or ids.min() != 0 or ids.max() != expected - 1:
        raise DataError(f"{loc} holds {len(ids)} tasks after collection, expected ids 0..{expected - 1}")
    mean, std, count = merge_stats(parts)
    stats_sha = write_norm_stats(loc, mean, std)
    opt = cfg.trajectory
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "family": cfg.task.family, "split": cfg.collect.split, "num_tasks": expected, "num_files": len(parts),
        "param_spec": spec.to_json(), "num_checkpoints": opt.num_checkpoints, "steps": opt.checkpoint_steps,
        "theta0": {"mode": cfg.trajectory.theta0, "init_seed": cfg.trajectory.init_seed, **start_entry},
        "config": fingerprint(cfg), "task_family": family_info, "schema": schema,
        "norm_stats": {"path": "_norm_stats.safetensors", "sha256": stats_sha, "count": count,
                       "over": "checkpoints 1..C-1 of every task"},
        "files": sorted((p.record() for p in parts), key=lambda r: r["first_task"]),
    }
    write_json(loc, MANIFEST, manifest)  # last: its presence marks the dataset complete
    return manifest


def run_collect(cfg: Config) -> dict:
    """Collect ``cfg.collect.num_tasks`` trajectories into ``<storage.uri>/trajectories``.

    Returns the summary ``{"stage", "uri", "tasks", "new_tasks", "files", "dim", "checkpoints", "seconds"}``.
    """
    tic = time.time()
    root = Location.parse(cfg.storage.uri, cfg.storage.endpoint_url)
    root.check_reachable()
    cfg = prepare(cfg)
    loc = root.child("trajectories")
    family = make_family(cfg.task, cfg.storage.endpoint_url)  # bad data roots fail here, before Ray starts
    spec = ParamSpec.from_module(family.build_net())
    c = cfg.collect
    # a batch holds C checkpoints of every task's weights, and the inner loop about 6 more copies (weights,
    # gradients, optimiser moments, SAM's perturbed weights)
    check_memory(min(c.batch_size, c.num_tasks) * (cfg.trajectory.num_checkpoints + 6) * spec.dim * 4,
                 "collect.batch_size", f"one batch of {c.batch_size} trajectories of {spec.dim} weights")
    with writer_lease(root, "trajectories", "collect", cfg.storage.lease_ttl_s) as lease:
        return {"stage": "collect", "uri": str(loc), "family": cfg.task.family, "split": cfg.collect.split,
                **_collect(cfg, loc, family, spec, lease), "dim": spec.dim, "seconds": round(time.time() - tic, 2)}


def _collect(cfg: Config, loc: Location, family, spec: ParamSpec, lease: Lease) -> dict:
    """The body of :func:`run_collect`, run by the holder of the dataset's write lease."""
    _claim(loc, cfg)
    manifest = read_json(loc, MANIFEST, MANIFEST_KEYS)
    if manifest is not None and manifest["num_tasks"] == cfg.collect.num_tasks:
        log.info("collect: %s is complete (%d tasks); nothing to do", loc, manifest["num_tasks"])
        return {"tasks": manifest["num_tasks"], "new_tasks": 0, "files": manifest["num_files"],
                "checkpoints": manifest["num_checkpoints"]}
    if manifest is not None:  # extending to more tasks: not complete until the new manifest lands
        loc.remove(MANIFEST)
    existing = _scan_existing(loc)
    done = np.concatenate([p.task_ids for p in existing]) if existing else np.zeros(0, np.int64)
    missing = np.setdiff1d(np.arange(cfg.collect.num_tasks, dtype=np.int64), done)
    log.info("collect: %s has %d of %d tasks", loc, cfg.collect.num_tasks - len(missing), cfg.collect.num_tasks)
    theta0, start_entry = ensure_stored(cfg, loc, family)  # before the first trajectory; a re-run reads it back
    new = _collect_missing(cfg, loc, missing, None if theta0 is None else theta0.numpy()) if len(missing) else []
    lease.check()
    manifest = _finalise(loc, cfg, existing + new, spec, family.describe(), row_schema(cfg, family, spec),
                         start_entry)
    log.info("collect: wrote %s (%d files, D=%d)", loc.child(MANIFEST), len(manifest["files"]), spec.dim)
    return {"tasks": manifest["num_tasks"], "new_tasks": int(sum(p.rows for p in new)),
            "files": manifest["num_files"], "checkpoints": manifest["num_checkpoints"]}


def row_schema(cfg: Config, family, spec: ParamSpec) -> dict:
    """Per-row dtype and shape of every column the collector writes."""
    c = cfg.trajectory.num_checkpoints
    scalar = lambda dtype: {"dtype": dtype, "shape": []}  # noqa: E731
    return {"task_id": scalar("int64"), "seed": scalar("int64"),
            **{k: {"dtype": dt, "shape": list(shape)} for k, (shape, dt) in family.fields().items()},
            "steps": {"dtype": "int32", "shape": [c]}, "checkpoints": {"dtype": "float32", "shape": [c, spec.dim]},
            **{k: {"dtype": "float32", "shape": [c]} for k in ("pool_loss", "query_loss", "query_metric")},
            "family": scalar("string"), "split": scalar("string")}
