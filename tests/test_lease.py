"""One writer per artifact: the write lease on local disk and on S3 (a moto server on 127.0.0.1), without Ray."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from ltdi_ray.errors import StorageError
from ltdi_ray.storage.fs import Location
from ltdi_ray.storage.lease import Lease, lease_name, writer_lease

HOLD = """
import sys, time
from ltdi_ray.storage.fs import Location
from ltdi_ray.storage.lease import Lease
Lease(Location.parse(sys.argv[1], sys.argv[2] or None), "trajectories", "collect", float(sys.argv[3])).acquire()
print("held", flush=True)
time.sleep(600)
"""


def _holder(uri: str, endpoint: str = "", ttl: float = 60.0) -> subprocess.Popen:
    """Another process holding the lease of ``trajectories`` under ``uri`` until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, uri, endpoint, str(ttl)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return Location.parse(str(tmp_path / "run"))
    endpoint, bucket = request.getfixturevalue("s3_endpoint"), request.getfixturevalue("bucket")
    return Location.parse(f"s3://{bucket}/run", endpoint)


def test_a_second_writer_is_refused_naming_the_owner_and_a_released_lease_is_free_at_once(root):
    proc = _holder(root.uri, root.endpoint_url or "")
    try:
        with pytest.raises(StorageError, match=rf"trajectories under {root.uri} is being written by collect "
                                               rf"\(host \S+, pid {proc.pid}, started \S+\)") as err:
            Lease(root, "trajectories", "collect", 60.0).acquire()
        assert "\n" not in str(err.value)
        with writer_lease(root, "generator", "train", 60.0):  # another artifact of the same run root
            pass
    finally:
        _kill(proc)
    for _ in range(2):
        with writer_lease(root, "results", "evaluate", 60.0):
            pass
    assert lease_name("results") not in root.list()


def test_a_killed_owner_on_this_host_never_blocks_the_next_writer(root):
    _kill(_holder(root.uri, root.endpoint_url or ""))  # local: the kernel drops its lock; S3: its pid is gone
    with writer_lease(root, "trajectories", "collect", 60.0):
        assert json.loads(root.read_bytes(lease_name("trajectories")))["pid"] == os.getpid()  # taken, not shared


def test_another_hosts_lease_is_taken_over_after_ttl_and_by_exactly_one_writer(s3_endpoint, bucket):
    root = Location.parse(f"s3://{bucket}/run", s3_endpoint)
    elsewhere = {"stage": "collect", "host": "another-node", "pid": os.getpid(), "started": "?", "ttl_s": 2.0}
    root.write_atomic(lease_name("trajectories"), json.dumps(elsewhere).encode())
    with pytest.raises(StorageError, match=r"being written by collect \(host another-node, .* renewed [0-2] s ago"):
        Lease(root, "trajectories", "collect", 60.0).acquire()
    time.sleep(2.5)
    outcomes = []

    def race():
        try:
            outcomes.append(Lease(root, "trajectories", "collect", 60.0).acquire())
        except StorageError as err:
            outcomes.append(err)

    racers = [threading.Thread(target=race) for _ in range(4)]
    for t in racers:
        t.start()
    for t in racers:
        t.join()
    won = [o for o in outcomes if isinstance(o, Lease)]
    assert len(won) == 1 and len(outcomes) == 4, outcomes
    won[0].release()


def test_a_held_s3_lease_is_renewed_and_a_lost_one_stops_publishing(s3_endpoint, bucket):
    root = Location.parse(f"s3://{bucket}/run", s3_endpoint)
    with writer_lease(root, "trajectories", "collect", 2.0) as lease:  # renewed every 0.5 s
        time.sleep(2.5)  # past its ttl (the store's clock counts whole seconds): only the renewals keep it
        with pytest.raises(StorageError, match="being written"):
            Lease(root, "trajectories", "collect", 2.0).acquire()
        lease.check()
        root.write_atomic(lease_name("trajectories"), b'{"stage": "someone else"}')  # taken over behind its back
        time.sleep(1.0)
        with pytest.raises(StorageError, match="lost the write lease"):
            lease.check()
    assert root.exists(lease_name("trajectories"))  # release leaves the new owner's lease alone


def test_a_lease_under_a_path_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "taken").write_text("not a directory")
    with pytest.raises(StorageError, match=r"cannot take the write lease .*/taken/run/_lease-trajectories.json: "
                                           r"Not a directory$"):
        Lease(Location.parse(str(tmp_path / "taken" / "run")), "trajectories", "collect", 60.0).acquire()


@pytest.mark.parametrize("stage, artifact", [("collect", "trajectories"), ("train", "generator")])
def test_a_stage_whose_artifact_is_being_written_exits_2_with_one_line_and_writes_nothing(tmp_path, stage, artifact):
    root = Location.parse(str(tmp_path))
    with writer_lease(root, artifact, "another-" + stage, 60.0):
        out = subprocess.run([sys.executable, "-m", "ltdi_ray", stage, "experiment=smoke", f"storage.uri={tmp_path}"],
                             capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith(f"error: {artifact} under {tmp_path} is being written by another-{stage} (host ")
    assert out.stderr.count("\n") == 1  # one line
    assert list(tmp_path.iterdir()) == []  # and its lease is gone


def test_two_collects_started_together_write_every_task_once(ray_session, tmp_path):
    """The issue's case: both used to exit 0 with every task written twice. The second is refused while the
    first runs; the first's dataset holds each id once and its files pass their checksums."""
    from test_cli import cli_env

    from ltdi_ray.config import load_config
    from ltdi_ray.errors import LtdiError
    from ltdi_ray.pipelines.collect import run_collect
    from ltdi_ray.storage.dataset import TrajectoryDataset

    args = ["experiment=smoke", "collect.num_tasks=32", "collect.batch_size=4", f"storage.uri={tmp_path}"]
    env = cli_env()  # a user's run: token auth on
    first = subprocess.Popen([sys.executable, "-m", "ltdi_ray", "collect", *args, "ray.num_cpus=2"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not (tmp_path / lease_name("trajectories")).exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    with pytest.raises(LtdiError, match=r"trajectories under .* is being written by collect \(host .*, pid "
                                        rf"{first.pid}, "):
        run_collect(load_config([*args, "collect.num_actors=1"]))
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert json.loads(out.strip().splitlines()[-1])["new_tasks"] == 32
    ids = TrajectoryDataset.open(str(tmp_path / "trajectories")).load(["task_id"])["task_id"].tolist()
    assert ids == list(range(32))  # each once
