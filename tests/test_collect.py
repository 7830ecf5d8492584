"""The collect stage on a real local Ray, writing to a temp dir and to S3 on a moto server."""

import json
import os

import numpy as np
import pytest
import torch

from ltdi_ray.config import load_config
from ltdi_ray.errors import ConfigError, DataError, StorageError
from ltdi_ray.pipelines.collect import make_batcher, run_collect
from ltdi_ray.storage.artifact import DATA_DIR, MANIFEST, read_norm_stats
from ltdi_ray.storage.dataset import TrajectoryDataset
from ltdi_ray.storage.fs import Location
from ltdi_ray.tasks import make_family
from ltdi_ray.trajectories.theta0 import FILE as START
from ltdi_ray.trajectories.theta0 import initial_theta, read_stored, stored_start

SMOKE = ["experiment=smoke", "collect.num_tasks=24", "collect.batch_size=8", "collect.num_actors=2"]


def collect(uri, *extra, endpoint=None):
    overrides = [*SMOKE, f"storage.uri={uri}", *extra]
    if endpoint:
        overrides.append(f"storage.endpoint_url={endpoint}")
    return run_collect(load_config(overrides))


def test_collect_local_writes_a_complete_self_describing_dataset(ray_session, tmp_path):
    summary = collect(tmp_path)
    assert summary["tasks"] == summary["new_tasks"] == 24 and summary["files"] == 3 and summary["dim"] == 1761
    ds = TrajectoryDataset.open(summary["uri"])
    m = ds.manifest
    assert m["num_tasks"] == 24 and m["steps"] == [0, 5, 10, 15, 20] and m["param_spec"]["dim"] == 1761
    assert m["config"]["trajectory"]["lr"] == 0.01 and m["theta0"]["mode"] == "reptile"  # the sinusoid default
    theta0, record = read_stored(ds.loc, m["theta0"]["sha256"])
    assert m["theta0"]["path"] == START and record.items() <= m["theta0"].items()
    assert record["trained"]["meta_steps"] == 5 and record["trained"]["train_tasks"] == 64  # smoke's start keys
    rows = ds.load()
    np.testing.assert_array_equal(rows["checkpoints"][:, 0], np.broadcast_to(theta0.numpy(), (24, 1761)))
    base = initial_theta(make_family(load_config(SMOKE).task), 0)
    assert not torch.equal(theta0, base)  # meta-learned from the base init, not the base init
    assert rows["task_id"].tolist() == list(range(24))
    assert rows["checkpoints"].shape == (24, 5, 1761) and np.isfinite(rows["checkpoints"]).all()
    assert (rows["split"] == "train").all() and (rows["family"] == "sinusoid").all()
    stats = read_norm_stats(ds.loc, m["norm_stats"]["sha256"])
    targets = rows["checkpoints"][:, 1:].reshape(-1, 1761).astype(np.float64)
    np.testing.assert_allclose(stats["mean"], targets.mean(0), atol=1e-5)
    np.testing.assert_allclose(stats["std"], targets.std(0), atol=1e-4)
    # re-running the same command does no work
    again = collect(tmp_path)
    assert again["new_tasks"] == 0 and again["tasks"] == 24


def test_resume_after_a_crash_keeps_good_files_and_replaces_torn_ones(ray_session, tmp_path):
    first = collect(tmp_path)
    loc = Location.parse(first["uri"])
    data = loc.child(DATA_DIR)
    parts = data.list()
    before = TrajectoryDataset.open(first["uri"]).load()
    # the crash: no manifest yet, one file lost, one torn half-way, a temp file left behind
    loc.remove(MANIFEST)
    data.remove(parts[0])
    torn = os.path.join(data.path, parts[1])
    with open(torn, "r+b") as fh:
        fh.truncate(os.path.getsize(torn) // 2)
    open(os.path.join(data.path, ".tmp-deadbeef-part-x.parquet"), "wb").close()
    resumed = collect(tmp_path)
    assert resumed["new_tasks"] == 16 and resumed["tasks"] == 24
    assert sorted(data.list()) == sorted(parts)  # same deterministic names, no leftovers
    after = TrajectoryDataset.open(resumed["uri"]).load()
    assert after["task_id"].tolist() == list(range(24))
    np.testing.assert_allclose(after["checkpoints"], before["checkpoints"], atol=1e-5)


def test_extending_and_refusing_to_mix(ray_session, tmp_path):
    collect(tmp_path)
    start = tmp_path / "trajectories" / START
    first_start = start.read_bytes()
    grown = collect(tmp_path, "collect.num_tasks=32")
    assert grown["tasks"] == 32 and grown["new_tasks"] == 8
    assert start.read_bytes() == first_start  # the new tasks start where the first ones did
    rows = TrajectoryDataset.open(grown["uri"]).load(["checkpoints"])["checkpoints"]
    assert (rows[:, 0] == rows[0, 0]).all()
    with pytest.raises(ConfigError, match=r"reptile_start.meta_steps: 5 -> 6"):
        collect(tmp_path, "collect.num_tasks=32", "reptile_start.meta_steps=6")
    with pytest.raises(ConfigError, match="trajectory.lr: 0.01 -> 0.02.*new storage.uri"):
        collect(tmp_path, "collect.num_tasks=32", "trajectory.lr=0.02")
    with pytest.raises(ConfigError, match="collect.num_tasks>=32"):
        collect(tmp_path, "collect.num_tasks=16")


def test_foreign_directory_is_not_touched(ray_session, tmp_path):
    (tmp_path / "trajectories" / DATA_DIR).mkdir(parents=True)
    (tmp_path / "trajectories" / DATA_DIR / "somebody_elses.parquet").write_bytes(b"x")
    with pytest.raises(DataError, match="not an ltdi_ray dataset"):
        collect(tmp_path)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing written beside it, and it is untouched
    assert files == [tmp_path / "trajectories" / DATA_DIR / "somebody_elses.parquet"] and files[0].read_bytes() == b"x"


def test_collect_to_s3(ray_session, s3_endpoint, bucket):
    summary = collect(f"s3://{bucket}/run", endpoint=s3_endpoint)
    assert summary["uri"] == f"s3://{bucket}/run/trajectories" and summary["tasks"] == 24
    ds = TrajectoryDataset.open(summary["uri"], s3_endpoint)
    assert ds.load(["task_id"])["task_id"].tolist() == list(range(24))
    listing = ds.loc.list(DATA_DIR)
    assert len(listing) == 3 and all(n.startswith("part-") for n in listing)
    assert collect(f"s3://{bucket}/run", endpoint=s3_endpoint)["new_tasks"] == 0


def test_missing_bucket_and_dead_endpoint(s3_endpoint, tmp_path):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' not found at endpoint"):
        collect("s3://no-such-bucket/run", endpoint=s3_endpoint)
    with pytest.raises(StorageError, match="cannot reach S3 at endpoint http://127.0.0.1:9"):
        collect("s3://some-bucket/run", endpoint="http://127.0.0.1:9")


def test_collect_omniglot_full_net(ray_session, tmp_path, omniglot_root):
    # a 16 MB budget holds one task of this conv net (about 15 MB measured): every call runs in chunks
    keys = ["task=omniglot", f"task.root={omniglot_root}", "task.channels=8", "collect.num_tasks=8",
            "collect.batch_size=4", "collect.chunk_mb=16"]
    summary = collect(tmp_path, *keys)
    ds = TrajectoryDataset.open(summary["uri"])
    rows = ds.load()
    cfg = load_config([*SMOKE, *keys[:-1]])
    whole = make_batcher(cfg, shared=torch.from_numpy(rows["checkpoints"][0, 0].copy()))
    assert make_batcher(load_config([*SMOKE, *keys]), shared=whole.theta0.shared).chunk_tasks() < 4
    assert rows["task_id"].tolist() == list(range(8))
    # one pass's rows, up to float32 sums in another order (convolutions over another batch size, amplified by
    # Adam's m / sqrt(v) near zero gradients: up to 1.3e-2 measured; another task's weights differ by O(0.1))
    expected = whole(np.arange(8))
    np.testing.assert_allclose(rows["checkpoints"], expected["checkpoints"], atol=2e-2)
    np.testing.assert_allclose(rows["query_loss"], expected["query_loss"], rtol=2e-2, atol=2e-3)
    assert rows["pool_x"].shape == (8, 75, 28, 28) and rows["pool_x"].dtype == np.uint8
    assert rows["query_metric"].shape == (8, 5) and (rows["query_metric"] <= 1).all()
    assert len(ds.manifest["task_family"]["split"]["train"]) == 150


def test_corrupt_dataset_files_are_named(ray_session, tmp_path):
    summary = collect(tmp_path)
    ds = TrajectoryDataset.open(summary["uri"])
    name = ds.manifest["files"][0]["path"]
    path = os.path.join(ds.loc.path, name)
    blob = bytearray(open(path, "rb").read())
    blob[100] ^= 0xFF
    open(path, "wb").write(bytes(blob))
    with pytest.raises(DataError, match=f"{name}.*fails its checksum"):
        ds.load()
    os.remove(path)
    with pytest.raises(DataError, match=f"{name} is missing"):
        ds.load()
    start = os.path.join(ds.loc.path, START)
    open(start, "ab").write(b"x")
    with pytest.raises(DataError, match=f"{START} does not match the checksum"):
        stored_start(ds.loc, ds.manifest)
    os.remove(start)
    with pytest.raises(DataError, match=f"{START} is missing"):
        stored_start(ds.loc, ds.manifest)
    os.remove(os.path.join(ds.loc.path, MANIFEST))
    with pytest.raises(DataError, match="no complete trajectory dataset"):
        TrajectoryDataset.open(summary["uri"])


def test_manifest_is_plain_json_with_checksums(ray_session, tmp_path):
    summary = collect(tmp_path)
    manifest = json.loads((tmp_path / "trajectories" / MANIFEST).read_text())
    assert {f["rows"] for f in manifest["files"]} == {8} and all(len(f["sha256"]) == 64 for f in manifest["files"])
    assert manifest["schema"]["checkpoints"] == {"dtype": "float32", "shape": [5, 1761]}
    assert summary["checkpoints"] == 5


def _republish(ds, record, table):
    """Overwrite one part with ``table`` and give the manifest its checksum: a consistent file with
    the wrong contents (a writer bug, not a torn write), so the content checks must catch it."""
    import hashlib
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    with open(os.path.join(ds.loc.path, record["path"]), "wb") as f:
        f.write(buf.getvalue())
    record["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()


def test_a_dataset_with_wrong_contents_fails_naming_the_file(ray_session, tmp_path):
    from ltdi_ray.storage.artifact import arrays_to_table

    ds = TrajectoryDataset.open(collect(tmp_path)["uri"])
    record, name = ds.manifest["files"][1], ds.manifest["files"][1]["path"]
    good = ds.read_file(record)
    _republish(ds, record, arrays_to_table({k: v for k, v in good.items() if k != "checkpoints"}))
    with pytest.raises(DataError, match=rf"{name} lacks columns \['checkpoints'\]"):
        ds.load()
    bad = {**good, "checkpoints": good["checkpoints"].copy()}
    bad["checkpoints"][3, 2, 17] = np.nan
    _republish(ds, record, arrays_to_table(bad))
    with pytest.raises(DataError, match=f"{name} contains NaN/Inf weights"):
        ds.load()
    _republish(ds, record, arrays_to_table(good))
    ds.load()  # the original contents pass again
    # a manifest whose ParamSpec is another network's (a 20-20 MLP instead of 40-40)
    wrong = json.loads(json.dumps(ds.manifest))
    wrong["param_spec"]["shapes"] = [[min(n, 20) for n in shape] for shape in wrong["param_spec"]["shapes"]]
    wrong["param_spec"]["dim"] = sum(int(np.prod(shape)) for shape in wrong["param_spec"]["shapes"])
    with pytest.raises(DataError, match=r"data/part-\S+ holds 1761-dim weights, the manifest's ParamSpec needs 481"):
        TrajectoryDataset(ds.loc, wrong).load()
    path = os.path.join(ds.loc.path, name)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(DataError, match=f"{name} is not readable Parquet"):
        ds.read_file(record, verify=False)  # a reader that skips checksums still names the torn file


@pytest.mark.slow  # minutes: run with -m slow
def test_a_killed_collector_actor_is_replaced_and_its_block_retried(ray_session, tmp_path):
    """SIGKILL one collector actor's process mid-run: Ray Data restarts it and re-runs its block;
    the dataset still holds every task exactly once."""
    import signal
    import threading
    import time

    from ray.util.state import list_actors

    result = {}
    args = ["collect.num_tasks=48", "collect.batch_size=4", "trajectory.steps=100", "trajectory.save_every=25"]
    worker = threading.Thread(target=lambda: result.update(summary=collect(tmp_path, *args)))
    worker.start()
    victim, deadline = None, time.time() + 120
    data = tmp_path / "trajectories" / DATA_DIR
    while victim is None and time.time() < deadline and worker.is_alive():
        alive = [a for a in list_actors(filters=[("state", "=", "ALIVE")])
                 if "TrajectoryCollector" in a.class_name and a.pid]
        if alive and data.is_dir() and any(p.name.startswith("part-") for p in data.iterdir()):
            victim = alive[0].pid
        time.sleep(0.1)
    assert victim is not None, "no collector actor was seen at work"
    os.kill(victim, signal.SIGKILL)
    worker.join(timeout=300)
    summary = result["summary"]  # the run finished by itself, with the actor gone
    assert summary["tasks"] == 48 and summary["new_tasks"] == 48
    rows = TrajectoryDataset.open(summary["uri"]).load(["task_id"])  # verifies every checksum
    assert rows["task_id"].tolist() == list(range(48))
    assert sorted(p.name for p in data.iterdir()) == sorted(r["path"].split("/", 1)[1]
                                                            for r in TrajectoryDataset.open(summary["uri"]).manifest["files"])


def test_s3_stopping_mid_run_fails_in_bounded_time_and_a_rerun_finishes(ray_session):
    """The endpoint dies after the first part is written: collect fails with one line after its
    bounded retries, no manifest marks the partial dataset complete, and once the endpoint is back
    the same command collects only what is missing."""
    import threading
    import time

    import botocore.session
    from conftest import _free_port
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    port = _free_port()
    endpoint, server = f"http://127.0.0.1:{port}", ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    client = botocore.session.get_session().create_client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="dies-mid-run")
    uri, args = "s3://dies-mid-run/run", ["collect.num_tasks=64", "collect.batch_size=4", "collect.num_actors=1"]
    result = {}

    def run():
        try:
            result["summary"] = collect(uri, *args, endpoint=endpoint)
        except Exception as err:  # noqa: BLE001 - the test inspects what reached the caller
            result["error"] = err

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.time() + 120
    while time.time() < deadline and not client.list_objects_v2(Bucket="dies-mid-run", Prefix="run/trajectories/data/part-")["KeyCount"]:
        time.sleep(0.05)
    server.stop()  # moto keeps its objects in this process: a restarted server still has them
    stopped = time.time()
    worker.join(timeout=300)
    assert not worker.is_alive() and time.time() - stopped < 240
    err = result.get("error")
    assert isinstance(err, StorageError) and "\n" not in str(err), repr(err)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        keys = [o["Key"] for o in client.list_objects_v2(Bucket="dies-mid-run", Prefix="run/")["Contents"]]
        assert "run/trajectories/" + MANIFEST not in keys
        summary = collect(uri, *args, endpoint=endpoint)
        assert summary["tasks"] == 64 and 0 < summary["new_tasks"] < 64
        # read back in this process, whose s3fs listed data/ before the actors wrote to it
        rows = TrajectoryDataset.open(summary["uri"], endpoint).load(["task_id"])
        assert rows["task_id"].tolist() == list(range(64))
    finally:
        server.stop()


def test_a_claim_without_data_gives_way_to_the_corrected_command_and_one_with_data_does_not(tmp_path):
    """A run that failed before writing a data file (absurd sizes, out of memory) must not lock its
    directory against the corrected command; once a data file exists, another config is refused."""
    from ltdi_ray.pipelines.collect import _claim

    loc = Location.parse(str(tmp_path / "trajectories"))
    _claim(loc, load_config([*SMOKE, f"storage.uri={tmp_path}", "trajectory.lr=0.5"]))  # the failed run's claim
    loc.write_atomic(START, b"the failed run's start")
    corrected = load_config([*SMOKE, f"storage.uri={tmp_path}"])
    _claim(loc, corrected)
    assert json.loads(loc.read_bytes("_collect.json"))["fingerprint"]["trajectory"]["lr"] == 0.01
    assert not loc.exists(START)  # made under the failed run's config: not reused
    loc.child(DATA_DIR).write_atomic("part-000000000-000008-00000000.parquet", b"rows")
    with pytest.raises(ConfigError, match=r"collected with another config \(trajectory.lr"):
        _claim(loc, load_config([*SMOKE, f"storage.uri={tmp_path}", "trajectory.lr=0.5"]))


def test_normalisation_statistics_are_checked_against_the_manifest(tmp_path):
    from ltdi_ray.storage.artifact import write_norm_stats

    loc = Location.parse(str(tmp_path))
    sha = write_norm_stats(loc, np.zeros(4, np.float32), np.ones(4, np.float32))
    assert read_norm_stats(loc, sha)["std"].tolist() == [1, 1, 1, 1]
    with pytest.raises(DataError, match=r"_norm_stats.safetensors fail the manifest's checksum"):
        read_norm_stats(loc, "0" * 64)
    sha = write_norm_stats(loc, np.full(4, np.nan, np.float32), np.ones(4, np.float32))
    with pytest.raises(DataError, match=r"must hold finite 'mean' and 'std'"):
        read_norm_stats(loc, sha)
