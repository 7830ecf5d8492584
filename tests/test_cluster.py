"""A simulated two-node cluster: the two Train workers land on different nodes, read their
trajectory shards from S3 (moto on loopback) and checkpoint there (``pytest -m cluster``)."""

import os

import pytest

from ltdi_ray.config import load_config
from ltdi_ray.generator.checkpoint import read_meta
from ltdi_ray.pipelines.collect import run_collect
from ltdi_ray.pipelines.train import run_train
from ltdi_ray.storage.fs import Location

pytestmark = pytest.mark.cluster


@pytest.fixture
def two_nodes(s3_endpoint):
    """Two Ray nodes with 2 CPUs and one ``trainer_slot`` each; the session's local Ray (if any)
    steps aside and comes back afterwards."""
    import ray
    from conftest import start_local_ray
    from ray.cluster_utils import Cluster

    had_local = ray.is_initialized()
    ray.shutdown()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"trainer_slot": 1}})
    cluster.add_node(num_cpus=2, resources={"trainer_slot": 1})
    ray.init(address=cluster.address)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield cluster
    ray.shutdown()
    cluster.shutdown()
    if had_local:
        start_local_ray()


def test_two_workers_on_two_nodes_train_from_and_checkpoint_to_s3(two_nodes, bucket, s3_endpoint):
    cfg = load_config(["experiment=smoke", "collect.num_tasks=32", "collect.batch_size=16",
                       f"storage.uri=s3://{bucket}/run", f"storage.endpoint_url={s3_endpoint}",
                       f"ray.address={two_nodes.address}", "train.num_workers=2", "train.cpus_per_worker=1",
                       "+train.worker_resources.trainer_slot=1", "train.meta=reptile", "train.meta_batch=4"])
    run_collect(cfg)
    summary = run_train(cfg)
    assert summary["workers"] == 2 and summary["uri"].startswith(f"s3://{bucket}/run/train/")
    meta = read_meta(Location.parse(summary["generator_uri"], s3_endpoint))
    assert len(set(meta["nodes"])) == 2  # one worker per node: each node has one trainer_slot
    assert any(name.startswith("checkpoint_") for name in Location.parse(summary["uri"], s3_endpoint).list())
