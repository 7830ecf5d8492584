"""Data-parallel meta-training on a real local Ray: W workers = 1 worker, and a killed worker
restarts the group from the last checkpoint and ends where an uninterrupted run ends."""

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from ltdi_ray.config import load_config
from ltdi_ray.generator.checkpoint import read_meta, read_tensors
from ltdi_ray.pipelines.collect import run_collect
from ltdi_ray.pipelines.train import run_name, run_train
from ltdi_ray.storage.fs import Location

BASE = ["experiment=smoke", "collect.num_tasks=32", "collect.batch_size=16", "collect.num_actors=1",
        "train.meta=reptile", "train.meta_batch=4", "train.inner_steps=2", "train.cpus_per_worker=1"]


def config(uri, *extra):
    return load_config([*BASE, f"storage.uri={uri}", *extra])


@pytest.fixture(scope="module")
def dataset(ray_session, tmp_path_factory):
    """One collected run directory; every test trains on a copy of its trajectories."""
    root = tmp_path_factory.mktemp("collected")
    run_collect(config(root))
    return root / "trajectories"


def fresh_run(dataset: Path, tmp_path: Path, name: str) -> Path:
    shutil.copytree(dataset, tmp_path / name / "trajectories")
    return tmp_path / name


def weights(summary):
    loc = Location.parse(summary["generator_uri"])
    return read_tensors(loc, read_meta(loc), "model")


def assert_same_generator(a, b):
    wa, wb = weights(a), weights(b)
    # Summation order differs between 1 and 2 workers; nothing else does. Adam divides each coordinate's
    # step by its gradient's scale, so the order noise in a near-zero gradient moves that weight by a
    # small fraction of lr (1e-3) per step (seen: one of 4,096 weights 2.4e-5 apart after 8 steps); a
    # real difference (a shard missing or counted twice) moves whole tensors by about lr per step.
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=5e-5, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


def test_two_workers_train_the_same_generator_as_one(dataset, tmp_path):
    one = run_train(config(fresh_run(dataset, tmp_path, "one"), "train.epochs=2", "train.steps_per_epoch=4"))
    two = run_train(config(fresh_run(dataset, tmp_path, "two"), "train.epochs=2", "train.steps_per_epoch=4",
                           "train.num_workers=2"))
    assert two["workers"] == 2 and two["allreduce_s_per_step"] > 0 and one["allreduce_s_per_step"] == 0
    meta = read_meta(Location.parse(two["generator_uri"]))
    assert meta["workers"] == 2 and len(meta["nodes"]) == 2 and meta["num_train_tasks"] == 32
    assert_same_generator(one, two)


def _train_worker_pids():
    """Live Ray Train worker processes on this machine (Ray titles them ``ray::RayTrainWorker...``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"ray::RayTrainWorker"):
                pids.append(int(entry))
    return pids


@pytest.mark.slow  # minutes: two 2-worker runs of 120 steps; run with -m slow
def test_a_killed_worker_restarts_from_the_last_checkpoint_and_ends_on_the_same_curve(dataset, tmp_path):
    extra = ["train.epochs=4", "train.steps_per_epoch=30", "train.max_failures=1", "train.num_workers=2"]
    reference = run_train(config(fresh_run(dataset, tmp_path, "reference"), *extra))
    cfg = config(fresh_run(dataset, tmp_path, "killed"), *extra)
    run_dir = Path(cfg.storage.uri) / "train" / run_name(cfg)
    out = {}
    thread = threading.Thread(target=lambda: out.update(run_train(cfg)))
    thread.start()
    killed = None
    deadline = time.time() + 240
    while killed is None and thread.is_alive() and time.time() < deadline:
        # the snapshot is written once a reported checkpoint is registered (not when its upload starts)
        if (run_dir / "checkpoint_manager_snapshot.json").exists() and len(_train_worker_pids()) == 2:
            killed = _train_worker_pids()[-1]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    thread.join(timeout=300)
    assert killed is not None, "the run ended before a worker could be killed"
    meta = read_meta(Location.parse(out["generator_uri"]))
    assert out["epochs"] == 4 and meta["metrics"]["start_epoch"] >= 1  # resumed, not restarted from scratch
    wa, wb = weights(reference), weights(out)
    for name in wa:  # the same steps on the same workers: only the restart differs
        torch.testing.assert_close(wa[name], wb[name], atol=1e-6, rtol=1e-5, msg=name)
