"""The tune stage on a real local Ray: a tiny sweep, its outputs, the best config into train, resume."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ltdi_ray.cli import main
from ltdi_ray.config import load_config
from ltdi_ray.errors import ConfigError
from ltdi_ray.pipelines.collect import run_collect
from ltdi_ray.pipelines.train import run_train
from ltdi_ray.pipelines.tune import check_space, run_tune, sweep_base, trial_config
from ltdi_ray.storage.fs import Location

SWEEP = ["experiment=smoke", "collect.num_tasks=32", "collect.batch_size=16", "collect.num_actors=1",
         "train.cpus_per_worker=1", "tune=none", "+tune.space.diffusion.segments.grid=[1,3]",
         "+tune.space.diffusion.variant.grid=[local_consistency,bridge]", "tune.grace_period=1"]


@pytest.fixture(scope="module")
def sweep(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    cfg = load_config([*SWEEP, f"storage.uri={root}"])
    run_collect(cfg)
    return cfg, run_tune(cfg)


def test_a_tiny_sweep_writes_its_table_best_config_and_plots(sweep):
    cfg, summary = sweep
    assert summary["trials"] == 4 and summary["uri"] == str(Path(cfg.storage.uri) / "tune" / "sweep")
    table = json.loads(Path(summary["table"]).read_text())
    metrics = [t["val_metric"] for t in table["trials"]]
    assert metrics == sorted(metrics) and summary["best_metric"] == metrics[0]
    assert {tuple(sorted(t["params"].items())) for t in table["trials"]} == {
        (("diffusion.segments", k), ("diffusion.variant", v)) for k in (1, 3) for v in ("local_consistency", "bridge")}
    assert max(t["epochs"] for t in table["trials"]) == 2  # ASHA lets the first trial at a rung go on
    runs = Path(cfg.storage.uri) / "tune" / "sweep" / "runs"
    for t in table["trials"]:  # each history is what the trial's own Train run recorded, epoch by epoch
        run = next(p for p in runs.iterdir() if p.name.removeprefix("trial-") in t["trial"])
        snapshot = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
        assert t["history"] == [c["metrics"]["val_metric"] for c in snapshot["checkpoint_results"]]
    assert sorted(Path(p).name for p in summary["plots"]) == ["learning_curves.png", "metric_vs_k.png"]
    assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in summary["plots"])


def test_the_best_config_round_trips_into_train(sweep):
    cfg, summary = sweep
    best = load_config([*SWEEP, f"storage.uri={cfg.storage.uri}", f"config_file={summary['best_config']}"])
    params = summary["best_params"]
    assert best.diffusion.segments == params["diffusion.segments"] and best.diffusion.variant == params["diffusion.variant"]
    trained = run_train(best)
    assert trained["epochs"] == 2


@pytest.mark.slow  # minutes (a third sweep); the default run keeps test_rerunning_the_sweep_resumes_it
def test_an_interrupted_sweep_resumes_where_it_stopped(sweep, ray_session):
    cfg, _ = sweep
    args = [*SWEEP, f"storage.uri={cfg.storage.uri}", "tune.name=interrupted", "tune.max_concurrent_trials=1",
            f"ray.address={ray_session.get_runtime_context().gcs_address}"]
    proc = subprocess.Popen([sys.executable, "-m", "ltdi_ray", "tune", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=Path(cfg.storage.uri))
    runs = Path(cfg.storage.uri) / "tune" / "interrupted" / "runs"
    deadline = time.time() + 240
    while not list(runs.glob("trial-*/checkpoint_manager_snapshot.json")) and time.time() < deadline:
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves its experiment state and stops
    assert proc.wait(timeout=120) != 0
    from ray import tune
    assert tune.Tuner.can_restore(str(runs.parent))
    resumed = run_tune(load_config(args))
    table = json.loads(Path(resumed["table"]).read_text())["trials"]
    assert resumed["trials"] == 4 and all(t["val_metric"] is not None for t in table)


def test_no_trial_carries_the_drivers_credentials_into_rays_logs(sweep, ray_session):
    """Tune would copy AWS_* keys from the driver's environment into every trial's runtime env, which Ray's
    runtime-env agent logs in clear text; the session's environment holds fake keys (conftest)."""
    from conftest import FAKE_KEY_ID, FAKE_SECRET

    logs = Path(ray_session._private.worker._global_node.get_session_dir_path()) / "logs"
    agent_logs = list(logs.glob("runtime_env_agent*.log"))
    assert agent_logs and all(p.read_text(errors="replace") for p in agent_logs)  # trials did create runtime envs
    leaks = [p.name for p in logs.rglob("*") if p.is_file() and (FAKE_SECRET in p.read_text(errors="replace")
                                                                 or FAKE_KEY_ID in p.read_text(errors="replace"))]
    assert not leaks, leaks


def test_rerunning_the_sweep_resumes_it_instead_of_starting_over(sweep, capsys):
    cfg, first = sweep
    before = json.loads(Path(first["table"]).read_text())["trials"]
    runs = Path(first["uri"]) / "runs"
    trainer_runs = sorted(p.name for p in runs.iterdir())
    again = run_tune(cfg)  # the experiment state is on storage: the finished trials are not run again
    after = json.loads(Path(again["table"]).read_text())["trials"]
    # the same trials (a fresh sweep draws new trial ids), with the same histories, and no Train run started
    assert [(t["trial"], t["history"]) for t in after] == [(t["trial"], t["history"]) for t in before]
    assert sorted(p.name for p in runs.iterdir()) == trainer_runs and len(trainer_runs) == 4


def test_an_empty_or_unknown_space_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", "experiment=smoke", f"storage.uri={tmp_path}", "tune=none"])
    assert exit_info.value.code != 0 and "tune.space is empty" in capsys.readouterr().err
    cfg = load_config(["experiment=smoke", f"storage.uri={tmp_path}", "tune=none", "+tune.space.train.nope.grid=[1]"])
    with pytest.raises(ConfigError, match=r"tune.space.train.nope=1: unknown config key 'train.nope'"):
        check_space(cfg)
    bad = load_config(["experiment=smoke", f"storage.uri={tmp_path}", "tune=none", "diffusion.variant=bridge",
                       "+tune.space.diffusion.segments.grid=[3,0]"])
    with pytest.raises(ConfigError, match=r"tune.space.diffusion.segments=0: config key 'diffusion.segments': must be in"):
        check_space(bad)


def test_trials_get_their_own_family_defaults_and_every_combination_is_checked():
    def space(*keys):
        return load_config(["tune=none", *(f"+tune.space.{k}" for k in keys)])  # sinusoid: the hypernet by default

    base = sweep_base(space("diffusion.variant.grid=[local_consistency,bridge]"))
    assert trial_config(base, {"diffusion.variant": "bridge"}).diffusion.segments == 3  # not the hypernet's k = 1
    assert trial_config(base, {}).diffusion.variant == "hypernet"
    check_space(space("diffusion.segments.grid=[1,3]", "diffusion.variant.grid=[local_consistency,bridge]"))
    with pytest.raises(ConfigError, match=r"tune.space.diffusion.segments=3, diffusion.variant='hypernet': "
                                          r"config key 'diffusion.segments': must be 1 for diffusion.variant=hypernet"):
        check_space(space("diffusion.segments.grid=[1,3]", "diffusion.variant.grid=[hypernet,bridge]"))


def test_a_sweep_on_s3_keeps_its_state_and_outputs_in_the_bucket(ray_session, bucket, s3_endpoint):
    cfg = load_config([*SWEEP[:-2], "diffusion.variant=bridge", f"storage.uri=s3://{bucket}/run",
                       f"storage.endpoint_url={s3_endpoint}"])
    run_collect(cfg)
    summary = run_tune(cfg)
    assert summary["trials"] == 2 and summary["best_config"] == f"s3://{bucket}/run/tune/sweep/best_config.yaml"
    names = Location.parse(summary["uri"], s3_endpoint).list()
    assert {"trials.json", "best_config.yaml", "learning_curves.png", "metric_vs_k.png"} <= set(names)
    assert any(n.startswith("experiment_state") for n in names)  # Tune's own state, for resuming


@pytest.mark.slow  # minutes: run with -m slow
def test_a_killed_trial_is_retried_and_the_sweep_finishes(sweep):
    """SIGKILL the process of a running trial (its Tune actor): Tune restarts the trial
    (``tune.max_failures``), the other trials go on, and every trial ends with a metric."""
    import os
    import threading

    cfg, _ = sweep
    args = [*SWEEP, f"storage.uri={cfg.storage.uri}", "tune.name=killed", "tune.max_concurrent_trials=1"]
    result = {}
    worker = threading.Thread(target=lambda: result.update(summary=run_tune(load_config(args))))
    worker.start()
    runs = Path(cfg.storage.uri) / "tune" / "killed" / "runs"
    victim, deadline = None, time.time() + 240
    while victim is None and time.time() < deadline:
        if list(runs.glob("trial-*/checkpoint_*")):  # a trial is training
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if cmd.startswith(b"ray::") and b"ImplicitFunc" in cmd:
                    victim = int(pid)
        time.sleep(0.2)
    assert victim is not None, "no running trial process was found"
    os.kill(victim, signal.SIGKILL)
    worker.join(timeout=600)
    summary = result["summary"]
    table = json.loads(Path(summary["table"]).read_text())["trials"]
    assert summary["trials"] == 4 and all(t["val_metric"] is not None for t in table)
