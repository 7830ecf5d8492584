"""``train_loop_per_worker``: what every Ray Train worker runs (see pipelines/train.py)."""

from __future__ import annotations

import logging
import tempfile
import time
from typing import List

import numpy as np
import torch

from ltdi_ray.base_nets.paramspec import ParamSpec
from ltdi_ray.config.compose import config_from_plain
from ltdi_ray.errors import DataError
from ltdi_ray.generator.api import WeightGenerator
from ltdi_ray.generator.build import DataFacts, build_trainer, make_normalizer
from ltdi_ray.generator.checkpoint import read_meta, read_tensors, read_train_state, write_checkpoint
from ltdi_ray.generator.normalizer import WeightNormalizer
from ltdi_ray.meta.trainer import TaskStore, shard_range
from ltdi_ray.storage.fs import Location
from ltdi_ray.tasks import make_family
from ltdi_ray.tasks.episodes import support_of
from ltdi_ray.trajectories.theta0 import theta0_of


def _load_store(shard, family, norm: WeightNormalizer, device: torch.device, total: int, rank: int,
                world: int) -> TaskStore:
    """This worker's task range of the dataset, in task-id order, as tensors on ``device``."""
    lo, hi = shard_range(total, rank, world)
    parts = [p for p in shard.iter_batches(batch_size=4096, batch_format="numpy") if len(p["task_id"])]
    if not parts:
        raise DataError(f"worker {rank} received no training rows for tasks [{lo}, {hi})")
    rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(rows["task_id"], kind="stable")
    if not np.array_equal(rows["task_id"][order], np.arange(lo, hi)):
        raise DataError(f"worker {rank} expected tasks {lo}..{hi - 1} and received {len(order)} rows "
                        f"({rows['task_id'].min()}..{rows['task_id'].max()}): the dataset is missing tasks")
    return TaskStore.from_rows({k: v[order] for k, v in rows.items()}, family, norm, device, first=lo, total=total)


def _node_ids(world: int) -> List[str]:
    """The Ray node of every worker, by rank (recorded in the checkpoint: where the run ran)."""
    import ray
    node = ray.get_runtime_context().get_node_id()
    if world == 1:
        return [node]
    import torch.distributed as dist

    nodes: List[str] = [""] * world
    dist.all_gather_object(nodes, node)
    return nodes


def _allreduce(world: int):
    """Sum tensors over the workers in one collective (one flat buffer: per-tensor calls cost a
    round trip each)."""
    if world == 1:
        return None
    import torch.distributed as dist

    def allreduce(tensors: List[torch.Tensor]) -> None:
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    return allreduce


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    from ray.train import Checkpoint

    from ltdi_ray.pipelines.runtime import quiet_ray_data
    from ltdi_ray.progress import RemoteBar

    cfg = config_from_plain(loop_config["cfg"])
    log = logging.getLogger("ltdi_ray")
    log.setLevel(logging.INFO)  # its epoch lines, whatever the root logger lets through
    if not cfg.verbose:
        quiet_ray_data()
        # Train's own INFO lines (one per report) come from loggers outside ``ray.train``'s level
        logging.getLogger().setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    t = cfg.train
    torch.set_num_threads(max(1, int(t.cpus_per_worker)))
    device = torch.device("cuda" if t.use_gpu and torch.cuda.is_available() else "cpu")
    family = make_family(cfg.task, cfg.storage.endpoint_url)
    spec = ParamSpec.from_json(loop_config["param_spec"])
    facts = DataFacts(dim=spec.dim, checkpoint_steps=list(loop_config["checkpoint_steps"]))
    norm = make_normalizer(family, loop_config["mean"], loop_config["std"]).to(device)
    stored = loop_config["theta0"]  # the dataset's single start; None: tasks start elsewhere
    theta0 = theta0_of(cfg, family, None if stored is None else torch.from_numpy(stored.copy()))  # read-only arrays
    store = _load_store(ray.train.get_dataset_shard(f"shard_{rank}"), family, norm, device,
                        int(loop_config["num_tasks"]), rank, world)
    trainer = build_trainer(cfg, family, facts, spec, norm, theta0, store, rank=rank, world=world,
                            allreduce=_allreduce(world))
    model = trainer.gen
    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            loc = Location.parse(d)
            last = read_meta(loc)
            model.load_state_dict(read_tensors(loc, last, "model"))
            state, history = read_train_state(loc, last), last.get("history", [])
        trainer.opt.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"]) + 1
    val = family.sample_many("val", range(t.val_tasks), cfg.collect.seed)
    val_sx, val_sy = support_of(val, family, device, raw=True)
    live = WeightGenerator(cfg, spec, facts, model, norm, theta0.shared).to(device)  # shares model's weights
    meta = {"config": loop_config["cfg"], "param_spec": loop_config["param_spec"],
            "checkpoint_steps": facts.checkpoint_steps, "target_indices": loop_config["indices"],
            "dataset": loop_config["dataset"], "num_train_tasks": store.total, "workers": world,
            "nodes": _node_ids(world)}
    for epoch in range(start_epoch, t.epochs):
        tic = time.time()
        model.train()
        bar = RemoteBar(rank == 0 and loop_config["progress"], t.steps_per_epoch, f"train epoch {epoch + 1}/{t.epochs}")
        losses = []
        for s in range(t.steps_per_epoch):
            losses.append(trainer.step(epoch * t.steps_per_epoch + s))
            bar.update()
        bar.close()
        seconds = time.time() - tic
        model.eval()
        score = live.query_metric(live.generate_batch(val_sx, val_sy, seed=0), val)
        metrics = {"epoch": epoch, "start_epoch": start_epoch, "loss": float(np.mean(losses)),
                   "val_metric": float(score.mean()), "val_metric_median": float(score.median()),
                   "epoch_seconds": round(seconds, 3),
                   "tasks_per_s": round(t.steps_per_epoch * t.meta_batch / seconds, 2), **trainer.take_timing()}
        history.append({k: metrics[k] for k in ("epoch", "loss", "val_metric", "val_metric_median", "tasks_per_s")})
        if rank == 0:  # the one line per epoch a user watches, forwarded by Ray to the driver's console
            log.info("train: epoch %d/%d: loss %.4f, validation %s %.4f (median %.4f), %.0f tasks/s", epoch + 1,
                     t.epochs, metrics["loss"], family.metric_name, metrics["val_metric"], metrics["val_metric_median"],
                     metrics["tasks_per_s"])
        with tempfile.TemporaryDirectory() as d:
            reported = None
            if rank == 0:
                write_checkpoint(Location.parse(d), model,
                                 {"mean": norm.mean, "std": norm.std, "theta0": theta0.shared},
                                 {**meta, "epoch": epoch, "metrics": metrics, "history": history},
                                 # every random draw derives from (train.seed, step): no RNG state to keep
                                 {"optimizer": trainer.opt.state_dict(), "epoch": epoch,
                                  "step": (epoch + 1) * t.steps_per_epoch, "seed": t.seed})
                reported = Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=reported)
