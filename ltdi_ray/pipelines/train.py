"""The train stage: a trajectory dataset -> a generator checkpoint, on Ray Train.

Ray Data reads and verifies the dataset's files (only the target checkpoints, the pools and the
supports); worker r of W receives its own dataset ``shard_r``, the contiguous task range that
meta/trainer.py assigns it (only the files that overlap it are read), so W workers hold 1/W of
the tasks each and still reproduce a one-worker run.
Each epoch ends with a validation score (the quantity ``evaluate`` reports) and a checkpoint;
the final one is published at ``<storage.uri>/<name>`` (default ``generator``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from ltdi_ray.config.compose import config_changes, config_from_plain, to_plain
from ltdi_ray.config.schema import Config
from ltdi_ray.errors import ConfigError, DataError
from ltdi_ray.generator.checkpoint import copy_checkpoint, read_meta
from ltdi_ray.pipelines.collect import fingerprint
from ltdi_ray.pipelines.prepare import prepare
from ltdi_ray.progress import watched
from ltdi_ray.storage.artifact import read_norm_stats
from ltdi_ray.storage.dataset import TrajectoryDataset
from ltdi_ray.storage.fs import Location
from ltdi_ray.storage.lease import Lease, writer_lease
from ltdi_ray.trajectories.theta0 import stored_start

log = logging.getLogger("ltdi_ray")
COLUMNS = ["task_id", "checkpoints", "pool_x", "pool_y", "support_idx"]


def open_dataset(cfg: Config) -> TrajectoryDataset:
    """The run's dataset, refusing one collected under another task/trajectory config."""
    ds = TrajectoryDataset.open(str(Location.parse(cfg.storage.uri).child("trajectories")), cfg.storage.endpoint_url)
    changes = config_changes(ds.manifest["config"], fingerprint(cfg))
    if changes:
        raise ConfigError(f"the dataset at {ds.loc} was collected with another config ({'; '.join(changes[:3])}); "
                          "pass the same task/trajectory keys as collect")
    return ds


def _read_targets(batch: Dict[str, np.ndarray], dataset: TrajectoryDataset, indices: List[int],
                  lo: int, hi: int) -> Dict[str, np.ndarray]:
    """Ray Data map: file records -> verified rows of tasks ``[lo, hi)`` with only the target
    checkpoints ``(n, k + 1, D)``."""
    parts = []
    for rec in batch["record"]:
        arrays = dataset.read_file(json.loads(rec), COLUMNS)
        keep = (arrays["task_id"] >= lo) & (arrays["task_id"] < hi)
        arrays = {k: v[keep] for k, v in arrays.items()}
        arrays["targets"] = np.ascontiguousarray(arrays.pop("checkpoints")[:, indices])
        parts.append(arrays)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def shard_datasets(ds: TrajectoryDataset, indices: List[int], world: int) -> dict:
    """``{"shard_r": Ray Dataset}`` for r < world: the verified rows of worker r's task range."""
    import ray

    from ltdi_ray.meta.trainer import shard_range

    out = {}
    for rank in range(world):
        lo, hi = shard_range(ds.num_tasks, rank, world)
        records = [{"record": json.dumps(rec)} for rec in ds.manifest["files"]
                   if rec["first_task"] < hi and rec["last_task"] >= lo]
        out[f"shard_{rank}"] = ray.data.from_items(records).map_batches(
            _read_targets, batch_size=1, fn_kwargs={"dataset": ds, "indices": indices, "lo": lo, "hi": hi}).materialize()
    return out


SCALING_KEYS = ("num_workers", "use_gpu", "cpus_per_worker", "worker_resources", "max_failures", "reptile_chunk")


def run_name(cfg: Config) -> str:
    """Stable per training config: re-running the same command resumes the same Ray Train run.

    How the run is spread (worker count, resources) is not part of the name: a run re-submitted
    on more or fewer workers resumes where it stopped and follows the same curve.
    """
    train = {k: v for k, v in to_plain(cfg.train).items() if k not in SCALING_KEYS}
    key = {"data": fingerprint(cfg), "diffusion": to_plain(cfg.diffusion), "model": to_plain(cfg.model), "train": train}
    return "train-" + hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=6).hexdigest()


def fresh_name(cfg: Config, root: Location) -> str:
    """The run's name; with ``resume=false`` and an earlier run of it on storage, a new one beside it."""
    name = run_name(cfg)
    if cfg.resume or not root.child("train").exists(name):
        return name
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def storage_path(loc: Location) -> str:
    """A Ray ``storage_path`` for ``loc`` (S3 endpoints travel in the URI's query)."""
    if not loc.is_s3 or not loc.endpoint_url:
        return loc.uri
    region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    return f"{loc.uri}?endpoint_override={loc.endpoint_url}&region={region}"


def checkpoint_location(checkpoint, root: Location) -> Location:
    """Where a Ray Train ``Checkpoint`` under ``root``'s filesystem lives, as a :class:`Location`."""
    return Location(("s3://" if root.is_s3 else "") + checkpoint.path.lstrip("/" if root.is_s3 else ""),
                    root.endpoint_url)


def prepare_training(cfg: Config, what: str, held: Optional[Dict[str, float]] = None) -> Tuple[Location, dict, dict]:
    """Open and check the dataset, start Ray, check that it can place the workers (``what`` asks for them,
    holding ``held`` itself), read the shards: ``(root, loop_config, datasets)``."""
    from ltdi_ray.generator.build import build_diffusion
    from ltdi_ray.pipelines.runtime import ensure_ray

    root = Location.parse(cfg.storage.uri, cfg.storage.endpoint_url)
    root.check_reachable()
    ds = open_dataset(cfg)
    indices = build_diffusion(cfg).checkpoint_indices(ds.manifest["steps"])
    stats = read_norm_stats(ds.loc, ds.manifest["norm_stats"]["sha256"])
    ensure_ray(cfg.ray, cfg.verbose)
    ensure_workers_placeable(cfg, what, held)
    stored = stored_start(ds.loc, ds.manifest)
    loop_config = {"cfg": to_plain(cfg), "mean": stats["mean"], "std": stats["std"], "indices": indices,
                   "checkpoint_steps": ds.manifest["steps"], "param_spec": ds.manifest["param_spec"],
                   "dataset": str(ds.loc), "num_tasks": ds.num_tasks, "theta0": None if stored is None else stored.numpy(),
                   "progress": watched()}
    return root, loop_config, shard_datasets(ds, indices, cfg.train.num_workers)


def worker_bundle(cfg: Config) -> Dict[str, float]:
    """The resources one Train worker asks for."""
    t = cfg.train
    return {"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {}), **t.worker_resources}


def ensure_workers_placeable(cfg: Config, what: str, held: Optional[Dict[str, float]] = None) -> None:
    """Refuse (or, on a cluster that may grow, wait for) a run whose workers the cluster cannot place;
    ``held``: what its driver holds besides (a Tune trial)."""
    from ltdi_ray.pipelines.placement import ensure_placeable

    t = cfg.train
    ensure_placeable([worker_bundle(cfg)] * t.num_workers + ([held] if held else []), what,
                     "lower train.num_workers or train.cpus_per_worker, or set train.use_gpu=false, "
                     "or run on a larger cluster", cfg.ray.placement_timeout_s)


def make_trainer(cfg: Config, loop_config: dict, datasets: dict, name: str, storage: Location, callbacks=()):
    """The ``TorchTrainer`` of one training run named ``name`` under ``storage``."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ltdi_ray.pipelines.train_worker import train_loop_per_worker

    t = cfg.train
    return TorchTrainer(
        train_loop_per_worker, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker=worker_bundle(cfg)),
        run_config=RunConfig(name=name, storage_path=storage_path(storage), callbacks=list(callbacks),
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             logging_config=LoggingConfig("INFO" if cfg.verbose else "WARNING")),
        datasets=datasets, dataset_config=DataConfig(datasets_to_split=[]))


def run_train(cfg: Config, name: str = "generator") -> dict:
    """Meta-train a generator on ``<storage.uri>/trajectories``; publish it at ``<storage.uri>/<name>``.

    Returns ``{"stage", "uri", "generator_uri", "workers", "epochs", "val_metric", "tasks_per_s",
    "allreduce_s_per_step", "compute_s_per_step", "seconds"}`` (the last epoch's figures).
    """
    tic = time.time()
    cfg = prepare(cfg)
    root = Location.parse(cfg.storage.uri, cfg.storage.endpoint_url)
    root.check_reachable()
    with writer_lease(root, name, "train", cfg.storage.lease_ttl_s) as lease:
        return _train(cfg, root, name, lease, tic)


def _train(cfg: Config, root: Location, name: str, lease: Lease, tic: float) -> dict:
    """The body of :func:`run_train`, run by the holder of the generator's write lease."""
    from ltdi_ray.pipelines.runtime import user_errors_from_ray

    t = cfg.train
    name_of_run = fresh_name(cfg, root)
    meta = finished(root.child(name), name_of_run, t.epochs)
    if meta is not None:  # published by this run's last epoch: nothing to train, skip reading the shards
        log.info("train: %s already finished; %s is its last epoch", name_of_run, root.child(name))
        return summary(root, name, name_of_run, meta, tic)
    with user_errors_from_ray():  # the dataset's files are read and verified inside Ray Data tasks
        root, loop_config, datasets = prepare_training(cfg, f"train (train.num_workers={t.num_workers})")
        trainer = make_trainer(cfg, loop_config, datasets, name_of_run, root.child("train"))
        log.info("train: %s on %d worker(s), %d epochs x %d outer steps of %d tasks (meta=%s, %s k=%d)", name_of_run,
                 t.num_workers, t.epochs, t.steps_per_epoch, t.meta_batch, t.meta, cfg.diffusion.variant,
                 cfg.diffusion.segments)
        result = trainer.fit()
    if result.checkpoint is None:
        raise DataError(f"training under {root.child('train', name_of_run)} reported no checkpoint")
    published = root.child(name)
    lease.check()
    copy_checkpoint(checkpoint_location(result.checkpoint, root), published)
    return summary(root, name, name_of_run, read_meta(published), tic)


def finished(published: Location, name_of_run: str, epochs: int) -> Optional[dict]:
    """The metadata of the generator at ``published`` if it is the last epoch of run ``name_of_run``."""
    try:
        meta = read_meta(published)
        same = run_name(config_from_plain(meta["config"])) == name_of_run
    except (DataError, ConfigError, KeyError):  # absent, unreadable or from an older format: train
        return None
    return meta if same and meta["epoch"] + 1 >= epochs else None


def summary(root: Location, name: str, name_of_run: str, meta: dict, tic: float) -> dict:
    """The train stage's summary line from the published generator's metadata."""
    metrics = meta["metrics"]
    return {"stage": "train", "uri": str(root.child("train", name_of_run)), "generator_uri": str(root.child(name)),
            "workers": meta["workers"], "epochs": meta["epoch"] + 1, "val_metric": metrics["val_metric"],
            "tasks_per_s": metrics["tasks_per_s"], "allreduce_s_per_step": metrics["allreduce_s_per_step"],
            "compute_s_per_step": metrics["compute_s_per_step"], "seconds": round(time.time() - tic, 2)}
