"""Shared fixtures: one real local Ray per session, a real S3 endpoint (moto server) on loopback."""

import os
import socket
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FAKE_KEY_ID, FAKE_SECRET = "AKIALTDIFAKEKEY00000", "ltdi-fake-secret-never-to-be-printed"
OMNIGLOT = Path(os.environ.get("LTDI_OMNIGLOT_ROOT", REPO.parent / "shared" / "data" / "omniglot"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 (a real HTTP endpoint: pyarrow, s3fs and Ray workers reach it)."""
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    # Before ray.init, so local Ray workers inherit them; fake values, loopback only.
    # Distinctive, so tests can grep every output for them (test_security).
    os.environ.update(AWS_ACCESS_KEY_ID=FAKE_KEY_ID, AWS_SECRET_ACCESS_KEY=FAKE_SECRET, AWS_DEFAULT_REGION="us-east-1")
    os.environ.pop("AWS_PROFILE", None)
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint):
    """A fresh bucket on the moto server."""
    import botocore.session

    name = f"test-{uuid.uuid4().hex[:12]}"
    botocore.session.get_session().create_client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def start_local_ray():
    """The session's local Ray (4 logical CPUs: room for Data next to actors). With the dashboard:
    Train's placement-group cleaner needs its State API when Tune stops trials (docs/ray-notes.md 0.3)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
    ray.init(address="local", num_cpus=4, object_store_memory=256 * 1024**2, include_dashboard=True,
             dashboard_port=_free_port(), log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray


@pytest.fixture(scope="session")
def ray_session(s3_endpoint):
    """One local Ray instance for the whole session (a cluster test borrows the slot and restores it)."""
    ray = start_local_ray()
    yield ray
    ray.shutdown()


# the bridge (k = 3), not sinusoid's default hypernet: the chains, checkpoints and ablations the tests look at;
# the default itself runs in test_cli's README job
SMOKE = ["experiment=smoke", "collect.num_tasks=32", "collect.batch_size=16", "collect.num_actors=1",
         "diffusion.variant=bridge"]


def smoke_config(uri, *extra, endpoint=None):
    """The smallest sinusoid run at ``uri`` (``extra``: more overrides)."""
    from ltdi_ray.config import load_config

    return load_config([*SMOKE, f"storage.uri={uri}", *extra] + ([f"storage.endpoint_url={endpoint}"] if endpoint else []))


@pytest.fixture(scope="session")
def trained(ray_session, tmp_path_factory):
    """A collected and trained smoke run, shared by the tests that evaluate, load or plot it: ``(cfg, train summary)``."""
    from ltdi_ray.pipelines.collect import run_collect
    from ltdi_ray.pipelines.train import run_train

    cfg = smoke_config(tmp_path_factory.mktemp("run"))
    run_collect(cfg)
    return cfg, run_train(cfg)


@pytest.fixture(scope="session")
def omniglot_root() -> str:
    if not (OMNIGLOT / "images_background_small1.zip").is_file():
        pytest.skip(f"Omniglot archives not found at {OMNIGLOT} (set LTDI_OMNIGLOT_ROOT)")
    return str(OMNIGLOT)
