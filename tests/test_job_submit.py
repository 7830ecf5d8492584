"""`ray job submit` of the smoke pipeline to a real `ray start --head` with token authentication,
storing into a local directory and into S3 (moto server). Stops exactly the processes it started."""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import REPO, _free_port

pytestmark = pytest.mark.cluster
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def head(s3_endpoint):
    """A token-authenticated Ray head on 127.0.0.1 with free ports and its own temp dir."""
    temp = Path(f"/tmp/ltdi-{uuid.uuid4().hex[:8]}")  # short: Unix socket paths are limited to 107 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    dashboard = _free_port()
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={_free_port()}",
           f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1", f"--temp-dir={temp}", "--num-cpus=4",
           "--object-store-memory=268435456", "--include-dashboard=true"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_for_jobs_api(address, env)
        yield address, env
    finally:
        _stop(proc.pid, str(temp))
        shutil.rmtree(temp, ignore_errors=True)


def _proc_table():
    """``{pid: (parent pid, process group, command line)}`` of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            table[int(entry.name)] = (int(stat[1]), int(stat[2]), cmdline)
        except (ValueError, OSError):
            continue
    return table


def _stop(leader: int, temp: str) -> None:
    """SIGTERM, then SIGKILL, the processes this fixture started: the `ray start` leader's process group,
    every process naming its temp dir, and all their descendants. Nothing else on the machine."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        table = _proc_table()
        ours = {pid for pid, (_, group, cmd) in table.items() if group == leader or temp in cmd}
        grown = True
        while grown:
            kids = {pid for pid, (parent, _, _) in table.items() if parent in ours} - ours
            ours |= kids
            grown = bool(kids)
        for pid in ours:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 20
        while time.time() < deadline and any(_alive(pid) for pid in ours):
            time.sleep(0.5)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # zombies are gone
    except OSError:
        return False


def _wait_for_jobs_api(address: str, env: dict, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True).returncode == 0:
            return
        time.sleep(2)
    raise TimeoutError(f"the Ray head at {address} did not answer within {timeout} s")


def submit(address: str, env: dict, *overrides: str) -> subprocess.CompletedProcess:
    runtime_env = {"excludes": [".venv/", "ltdi_runs/", "docs/"]}
    cmd = [RAY, "job", "submit", "--address", address, "--working-dir", str(REPO),
           "--runtime-env-json", json.dumps(runtime_env), "--", sys.executable, "-m", "ltdi_ray", "pipeline",
           "experiment=smoke", "collect.num_tasks=32", "collect.num_actors=1", *overrides]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def test_job_submit_needs_the_token(head):
    address, env = head
    anonymous = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    assert subprocess.run([RAY, "job", "list", "--address", address], env=anonymous,
                          capture_output=True).returncode != 0


def test_submitted_pipeline_writes_a_local_run(head, tmp_path):
    address, env = head
    done = submit(address, env, f"storage.uri={tmp_path}")
    assert done.returncode == 0 and "succeeded" in (done.stdout + done.stderr).lower(), done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads([line.strip() for line in done.stdout.splitlines() if line.strip().startswith('{"stage": "pipeline"')][-1])
    assert summary["generator_uri"] == str(tmp_path / "generator")
    assert (tmp_path / "trajectories" / "_manifest.json").is_file()
    assert (tmp_path / "generator" / "generator.json").is_file() and (tmp_path / "results.json").is_file()


def test_submitted_pipeline_writes_to_s3(head, s3_endpoint, bucket):
    import s3fs

    address, env = head
    done = submit(address, env, f"storage.uri=s3://{bucket}/run", f"storage.endpoint_url={s3_endpoint}")
    assert done.returncode == 0 and "succeeded" in (done.stdout + done.stderr).lower(), done.stdout[-3000:] + done.stderr[-3000:]
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    assert fs.exists(f"{bucket}/run/trajectories/_manifest.json")
    assert fs.exists(f"{bucket}/run/generator/generator.json") and fs.exists(f"{bucket}/run/results.json")


def test_a_family_of_the_users_own_runs_from_its_working_dir(head, tmp_path):
    """The example family, submitted from its own directory: the driver and every worker import it from
    the uploaded working dir; nothing of it is installed."""
    address, env = head
    cmd = [RAY, "job", "submit", "--address", address, "--working-dir", str(REPO / "examples" / "polynomial"), "--",
           sys.executable, "-m", "ltdi_ray", "pipeline", "config_file=polynomial.yaml", "experiment=smoke",
           "collect.num_tasks=32", "collect.num_actors=1", "evaluate.methods=[init,maml,ltdi]", f"storage.uri={tmp_path}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0 and "succeeded" in (done.stdout + done.stderr).lower(), done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads([line.strip() for line in done.stdout.splitlines() if line.strip().startswith('{"stage": "pipeline"')][-1])
    assert set(summary["evaluate"]) == {"init", "maml", "ltdi"}
    assert json.loads((tmp_path / "results.json").read_text())["task"] == "polynomial"
