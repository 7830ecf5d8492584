"""Requests a cluster cannot place: one line at once on a fixed cluster, a bounded wait on one that may grow."""

import json
import socket
import threading
import time

import pytest

from ltdi_ray.errors import ConfigError
from ltdi_ray.pipelines.placement import cluster_can_grow, describe, ensure_placeable, how_many, packs


def test_packing_counts_each_node_not_the_cluster_total():
    two_small = [{"CPU": 2.0}, {"CPU": 2.0}]
    assert packs([{"CPU": 2.0}] * 2, two_small)
    assert not packs([{"CPU": 3.0}], two_small)  # four CPUs in all, but no node holds three
    assert not packs([{"CPU": 1.0}, {"CPU": 2.0}, {"CPU": 2.0}], two_small)
    assert packs([{"CPU": 1.0, "GPU": 1.0}], [{"CPU": 8.0}, {"CPU": 1.0, "GPU": 1.0}])
    assert not packs([{"CPU": 1.0, "trainer_slot": 1.0}] * 2, [{"CPU": 4.0, "trainer_slot": 1.0}])


def test_how_many_copies_fit_takes_the_scarcest_resource_per_node():
    nodes = [{"CPU": 5.0, "GPU": 1.0}, {"CPU": 3.0}, {"CPU": 16.0, "GPU": 2.0}]
    assert how_many({"CPU": 2.0}, nodes) == 2 + 1 + 8
    assert how_many({"CPU": 1.0, "GPU": 1.0}, nodes) == 1 + 0 + 2
    assert how_many({"CPU": 0.1}, [{"CPU": 0.3}]) == 3  # not 2 through float rounding


def test_described_resources_leave_ray_node_ids_out():
    assert describe({"CPU": 2.0, "node:127.0.0.1": 1.0, "memory": 2 * 2**30}) == "{CPU: 2, memory: 2.0 GiB}"


def test_a_local_cluster_never_grows_so_an_impossible_request_fails_at_once(ray_session):
    assert not cluster_can_grow()
    tic = time.time()
    with pytest.raises(ConfigError) as err:
        ensure_placeable([{"CPU": 3.0}] * 2, "train (train.num_workers=2)", "lower train.num_workers", 600)
    assert time.time() - tic < 10
    line = str(err.value)
    assert "\n" not in line and line.startswith("train (train.num_workers=2) asks for 2 x {CPU: 3}")
    assert "the cluster has 1 node(s): {CPU: 4" in line and line.endswith("lower train.num_workers")
    ensure_placeable([{"CPU": 2.0}] * 2, "train", "", 600)  # what fits returns


def test_training_more_workers_than_the_cluster_holds_is_refused_before_any_worker_starts(trained):
    from conftest import smoke_config

    from ltdi_ray.pipelines.train import run_train

    cfg, _ = trained
    tic = time.time()
    with pytest.raises(ConfigError, match=r"train \(train.num_workers=3\) asks for 3 x \{CPU: 2\}, which this"):
        # another epoch count: a new run (the worker count alone does not change a finished run's name)
        run_train(smoke_config(cfg.storage.uri, "train.num_workers=3", "train.cpus_per_worker=2", "train.epochs=3"))
    assert time.time() - tic < 60


def test_collect_actors_and_baseline_tasks_the_cluster_cannot_hold_are_refused_naming_the_key(trained, tmp_path):
    from conftest import smoke_config

    from ltdi_ray.pipelines.collect import run_collect
    from ltdi_ray.pipelines.evaluate import run_evaluate

    with pytest.raises(ConfigError, match=r"collect \(1 collector actor\(s\)\) asks for 1 x \{CPU: 8\}.*"
                                          r"collect.cpus_per_actor"):
        run_collect(smoke_config(tmp_path, "collect.cpus_per_actor=8"))
    cfg, _ = trained
    with pytest.raises(ConfigError, match=r"evaluate's baseline reptile asks for 1 x \{CPU: 8\}.*"
                                          r"evaluate.baseline.cpus"):
        run_evaluate(smoke_config(cfg.storage.uri, "evaluate.methods=[reptile]", "evaluate.baseline.cpus=8"))


def _smoke_dataset(tmp_path):
    from conftest import SMOKE

    from ltdi_ray.config import load_config
    from ltdi_ray.pipelines.collect import run_collect

    args = [*SMOKE, f"storage.uri={tmp_path}"]
    run_collect(load_config(args))
    return args


def test_on_two_cpus_two_workers_of_two_cpus_exit_2_in_seconds(ray_session, tmp_path):
    """The issue's case: Ray Train retried them every 60 s, forever. ``ray.num_cpus=2``: a fresh local
    instance the size of this machine."""
    from test_cli import run_cli

    args = _smoke_dataset(tmp_path)
    tic = time.time()
    res = run_cli("train", *args, "train.num_workers=2", "ray.num_cpus=2", timeout=120)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert lines[-1].startswith("error: train (train.num_workers=2) asks for 2 x {CPU: 2}, which this cluster can "
                               "never place (the cluster has 1 node(s): {CPU: 2")
    assert time.time() - tic < 60


@pytest.mark.slow  # a minute: a sweep through the CLI on its own 2-CPU Ray
def test_on_two_cpus_the_tune_stage_runs_with_its_default_resources(ray_session, tmp_path):
    """A trial that held a CPU left its default 2-CPU worker no room on a 2-CPU machine."""
    from test_cli import run_cli

    args = _smoke_dataset(tmp_path)
    res = run_cli("tune", *args, "ray.num_cpus=2", "tune=none", "+tune.space.train.lr.grid=[0.001]", timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])["trials"] == 1


def test_an_address_where_no_ray_cluster_listens_is_one_line_within_seconds(tmp_path):
    from test_cli import run_cli

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tic = time.time()
    res = run_cli("collect", "experiment=smoke", f"storage.uri={tmp_path}", f"ray.address=127.0.0.1:{port}", timeout=120)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert lines[-1].startswith(f"error: ray.address=127.0.0.1:{port}: nothing answers there within 5 s")
    assert time.time() - tic < 60


@pytest.mark.cluster
def test_a_cluster_that_may_grow_is_waited_for_a_bounded_time_then_refused(s3_endpoint):
    """A ``ray start`` style cluster (``Cluster``) may have an autoscaler: the request waits, and a node that
    joins in time is used; one that never comes ends the wait after ``timeout_s``."""
    import ray
    from conftest import start_local_ray
    from ray.cluster_utils import Cluster

    had_local = ray.is_initialized()
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    try:
        ray.init(address=cluster.address)
        assert cluster_can_grow()
        tic = time.time()
        with pytest.raises(ConfigError, match=r"asks for 1 x \{CPU: 3\}; the cluster has 1 node\(s\).*within "
                                              r"ray.placement_timeout_s=3 s; lower it"):
            ensure_placeable([{"CPU": 3.0}], "collect", "lower it", 3)
        assert 3 <= time.time() - tic < 30
        errors = []

        def wait():
            try:
                ensure_placeable([{"CPU": 3.0}], "collect", "lower it", 120)
            except ConfigError as err:
                errors.append(err)

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(2)
        cluster.add_node(num_cpus=4)  # Ray starts nodes from the main thread only
        waiter.join(timeout=150)
        assert not waiter.is_alive() and not errors  # it returned once the node had joined
        deadline = time.time() + 30
        while ray.available_resources().get("CPU") != 6 and time.time() < deadline:
            time.sleep(0.2)
        assert ray.available_resources().get("CPU") == 6  # the waiting group was removed
    finally:
        ray.shutdown()
        cluster.shutdown()
        if had_local:
            start_local_ray()
