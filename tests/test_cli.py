"""The entry point as users run it: one JSON summary line, one-line errors, crash and resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ltdi_ray.config import load_config
from ltdi_ray.pipelines.collect import run_collect
from ltdi_ray.storage.artifact import DATA_DIR, MANIFEST
from ltdi_ray.storage.dataset import TrajectoryDataset


def cli_env() -> dict:
    """The environment of a stage started as a user starts it: its own local Ray with Ray's default token
    authentication (the session's Ray turns it off for itself)."""
    return {**{k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}


def run_cli(*args, timeout=240, **kw):
    env = cli_env()
    return subprocess.run([sys.executable, "-m", "ltdi_ray", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


@pytest.mark.parametrize("args, needle", [
    (["frobnicate"], "unknown stage 'frobnicate'"),
    (["collect", "collect.num_tasks=-3"], "config key 'collect.num_tasks': must be >= 1"),
    (["collect", "task=cifar"], "config group 'task' has no option 'cifar'"),
    (["collect", "collect.num_tasks"], "is not an override; expected key=value"),
    (["collect", "task=omniglot", "task.root=/no/such/dir"], "Omniglot root /no/such/dir does not exist"),
])
def test_bad_input_is_one_line_and_nonzero(args, needle):
    res = run_cli(*args, timeout=60)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and needle in lines[-1], res.stderr
    assert "Traceback" not in res.stderr


def test_readme_main_job_at_toy_scale(tmp_path):
    res = run_cli("pipeline", "experiment=smoke", f"storage.uri={tmp_path}", "ray.num_cpus=4", timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["stage"] == "pipeline" and summary["collect"]["tasks"] == 64
    assert summary["uri"] == str(tmp_path / "results.json") and summary["generator_uri"] == str(tmp_path / "generator")
    # sinusoid's default generator is the hypernet: its own control is skipped and the bridge is trained instead
    assert set(summary["evaluate"]) == {"init", "finetune", "maml", "fomaml", "reptile", "encoder_fit", "bridge_k3",
                                        "ltdi", "ltdi_finetune", "condition_shuffle"}
    assert "method" in res.stdout and "collect:" in res.stderr  # the printed table, human-readable progress
    assert {p.name for p in (tmp_path / "ablations").iterdir()} == {"bridge_k3"}


def test_killed_collect_job_resumes_without_loss_or_duplicates(ray_session, tmp_path):
    args = ["experiment=smoke", "collect.num_tasks=96", "collect.batch_size=4", f"storage.uri={tmp_path}"]
    env = cli_env()
    proc = subprocess.Popen([sys.executable, "-m", "ltdi_ray", "collect", *args, "ray.num_cpus=2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    data = tmp_path / "trajectories" / DATA_DIR
    deadline = time.time() + 180
    while time.time() < deadline and not (data.is_dir() and any(p.name.startswith("part-") for p in data.iterdir())):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything in its session, mid-write
    proc.wait()
    assert not (tmp_path / "trajectories" / MANIFEST).exists()
    written = [p for p in data.iterdir() if p.name.startswith("part-")]
    assert 0 < len(written) < 24
    summary = run_collect(load_config([*args, "collect.num_actors=2"]))
    assert summary["tasks"] == 96 and 0 < summary["new_tasks"] < 96
    rows = TrajectoryDataset.open(summary["uri"]).load(["task_id"])
    assert rows["task_id"].tolist() == list(range(96))


def test_a_tampered_dataset_stops_train_with_one_line_not_a_ray_traceback(ray_session, tmp_path):
    """The file is read inside a Ray Data task: its error must still reach the user as one line."""
    args = ["experiment=smoke", "collect.num_tasks=16", "collect.batch_size=8", f"storage.uri={tmp_path}"]
    run_collect(load_config([*args, "collect.num_actors=1"]))
    part = next((tmp_path / "trajectories" / DATA_DIR).glob("part-*.parquet"))
    blob = bytearray(part.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    part.write_bytes(bytes(blob))
    res = run_cli("train", *args, "ray.num_cpus=2")
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: trajectory file ") and f"{part.name} fails its checksum" in lines[-1]
    assert "Traceback" not in res.stderr and "Ray Core internal code" not in res.stderr


@pytest.mark.slow  # minutes: run with -m slow
def test_a_killed_train_driver_resumes_from_its_last_checkpoint_when_resubmitted(ray_session, tmp_path):
    from ltdi_ray.generator.checkpoint import read_meta
    from ltdi_ray.pipelines.train import run_train
    from ltdi_ray.storage.fs import Location

    args = ["experiment=smoke", "collect.num_tasks=16", "collect.batch_size=8", "train.epochs=4",
            "train.steps_per_epoch=20", f"storage.uri={tmp_path}"]
    run_collect(load_config([*args, "collect.num_actors=1"]))
    env = cli_env()
    proc = subprocess.Popen([sys.executable, "-m", "ltdi_ray", "train", *args, "ray.num_cpus=2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    runs, deadline = tmp_path / "train", time.time() + 240

    def registered():  # a checkpoint Ray Train has recorded in its snapshot (what a restart resumes from)
        snap = list(runs.glob("train-*/checkpoint_manager_snapshot.json"))
        return bool(snap) and "checkpoint_" in snap[0].read_text()

    while time.time() < deadline and not registered():
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, its Ray and the Train workers, after epoch 1's checkpoint
    proc.wait()
    assert registered() and not (tmp_path / "generator").exists()
    summary = run_train(load_config(args))  # re-submitting the same command
    meta = read_meta(Location.parse(summary["generator_uri"]))
    assert summary["epochs"] == 4 and meta["metrics"]["start_epoch"] >= 1  # continued, not started over
    assert [h["epoch"] for h in meta["history"]] == [0, 1, 2, 3]  # the killed run's epochs kept in the record


def test_the_package_carries_its_config_groups(tmp_path):
    """A plain ``pip install .`` (a wheel) must compose configs from any directory: conf/ is package data."""
    import zipfile
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", str(repo), "--no-deps", "-q",
                          "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    names = zipfile.ZipFile(next(tmp_path.glob("ltdi_ray-*.whl"))).namelist()
    shipped = {n.removeprefix("ltdi_ray/conf/") for n in names if n.startswith("ltdi_ray/conf/")}
    packaged = {str(p.relative_to(repo / "ltdi_ray" / "conf")) for p in (repo / "ltdi_ray" / "conf").rglob("*.yaml")}
    assert shipped == packaged and "config.yaml" in shipped and "task/sinusoid.yaml" in shipped


def test_a_summary_line_with_a_diverged_score_is_still_strict_json():
    from ltdi_ray import jsonline

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    line = jsonline.dumps({"methods": {"maml": {"mean": float("nan"), "ci95": float("inf")}}, "lrs": [0.1, -float("inf")]})
    assert json.loads(line, parse_constant=refuse) == {"methods": {"maml": {"mean": None, "ci95": None}}, "lrs": [0.1, None]}


def test_a_batch_larger_than_the_machine_is_refused_before_anything_is_written(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ltdi_ray", "collect", "experiment=smoke", f"storage.uri={tmp_path / 'run'}",
                          "collect.num_tasks=1000000000", "collect.batch_size=100000000"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("error: config key 'collect.batch_size': one batch of 100000000 trajectories")
    assert not (tmp_path / "run").exists()  # no claim that would refuse the corrected command
