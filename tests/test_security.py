"""Security: no pickle is ever loaded, storage names stay under their root, credentials never leak."""

import ast
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAKE_KEY_ID, FAKE_SECRET
from hypothesis import given, settings
from hypothesis import strategies as st

from ltdi_ray.config import load_config
from ltdi_ray.errors import ConfigError, StorageError
from ltdi_ray.pipelines.pipeline import run_pipeline
from ltdi_ray.storage.fs import Location

PACKAGE = Path(__file__).resolve().parents[1] / "ltdi_ray"


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), {k.arg: ast.unparse(k.value) for k in node.keywords}


def test_the_package_never_unpickles():
    """No pickle/dill/marshal import, every torch.load with weights_only=True, no unsafe YAML or numpy loads."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if {"pickle", "cloudpickle", "dill", "marshal", "shelve"} & {*names, module}:
                found.append(f"{path.name}: imports {names or module}")
        for func, kw in _calls(tree):
            if func.endswith("torch.load") and kw.get("weights_only") != "True":
                found.append(f"{path.name}: {func} without weights_only=True")
            if func.endswith(("yaml.load", "yaml.unsafe_load", "yaml.full_load")):
                found.append(f"{path.name}: {func}")
            if func.endswith(("np.load", "numpy.load")) and kw.get("allow_pickle") != "False":
                found.append(f"{path.name}: {func} may unpickle")
    assert not found, found


@pytest.mark.parametrize("name", ["..", "../x", "a/../../b", "./x", "/etc/passwd", "", "a//b", "a\\..\\b"])
def test_a_name_cannot_leave_its_root(name, tmp_path):
    for root in (Location.parse(str(tmp_path)), Location.parse("s3://bucket/run")):
        with pytest.raises(StorageError, match="not a plain relative name"):
            root.child(name)


def test_plain_nested_names_are_kept():
    assert str(Location.parse("s3://b/run").child("ablations/vanilla", "generator.json")) == \
        "s3://b/run/ablations/vanilla/generator.json"


@pytest.mark.parametrize("uri", ["s3://bucket/../other", "s3://bucket/a/./b"])
def test_s3_keys_with_dot_segments_are_refused(uri):
    with pytest.raises(StorageError, match="segments are not allowed"):
        Location.parse(uri)


@pytest.mark.parametrize("name", ["..", ".", "a/b", ""])
def test_a_sweep_name_is_a_plain_directory_name(name):
    with pytest.raises(ConfigError, match="tune.name"):
        load_config([f"tune.name='{name}'"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["a", "b1", ".", "..", "", "x.y", "..z"]), min_size=1, max_size=4))
def test_child_accepts_exactly_the_names_without_dot_or_empty_segments(segments):
    name = "/".join(segments)
    ok = all(s not in ("", ".", "..") for s in segments)
    root = Location.parse("s3://bucket/run")
    if ok:
        assert root.child(name).uri == f"s3://bucket/run/{name}"
    else:
        with pytest.raises(StorageError):
            root.child(name)


def test_credentials_never_reach_outputs_logs_or_storage(ray_session, bucket, s3_endpoint, capfd, caplog):
    """A whole smoke pipeline on S3 with fake credentials in the environment (conftest): neither the key id
    nor the secret is in the summary, stdout/stderr, the log, any object written, or Ray's session logs."""
    cfg = load_config(["experiment=smoke", "collect.num_tasks=32", "collect.batch_size=16", "collect.num_actors=1",
                       "train.epochs=1", "evaluate.num_tasks=8", "evaluate.methods=[init,finetune,ltdi]",
                       f"storage.uri=s3://{bucket}/run", f"storage.endpoint_url={s3_endpoint}"])
    with caplog.at_level("INFO"):  # what the CLI logs (botocore DEBUG prints request headers)
        summary = run_pipeline(cfg)
    out = capfd.readouterr()
    texts = {"summary": json.dumps(summary), "stdout": out.out, "stderr": out.err, "log": caplog.text}
    fs = Location.parse(f"s3://{bucket}", s3_endpoint).fs
    objects = fs.find(bucket)
    assert any(o.endswith("generator/generator.json") for o in objects)
    texts.update({o: fs.cat_file(o).decode("latin-1") for o in objects})
    logs = Path(ray_session._private.worker._global_node.get_session_dir_path()) / "logs"
    texts.update({str(p): p.read_bytes().decode("latin-1") for p in logs.rglob("*") if p.is_file()})
    leaks = [where for where, text in texts.items() if FAKE_SECRET in text or FAKE_KEY_ID in text]
    assert not leaks, leaks


LOCAL_RUN = """
import json, os, sys
import ray
from ltdi_ray.config.schema import RayConfig
from ltdi_ray.pipelines.runtime import ensure_ray
ensure_ray(RayConfig(num_cpus=1))
ray.get(ray.remote(lambda: os.getpid()).remote())  # a worker process too
print(json.dumps({"node_ip": ray.util.get_node_ip_address(), "pid": os.getpid()}), flush=True)
sys.stdin.read()  # held until the test has looked
"""


def _listening_addresses(root_pid: int) -> dict:
    """``{address: [process names]}`` of the TCP sockets listening in ``root_pid`` and its descendants (Linux /proc)."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        parent[int(stat.parent.name)] = int(fields[1])
    tree = {root_pid} | {pid for pid in parent if _descends(pid, root_pid, parent)}
    owner = {}
    for pid in tree:
        try:
            for fd in (Path("/proc") / str(pid) / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    owner[link[8:-1]] = (Path("/proc") / str(pid) / "comm").read_text().strip()
        except OSError:
            continue
    found = {}
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in owner:  # LISTEN
                raw = bytes.fromhex(cols[1].split(":")[0])
                ip = socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6,
                                      b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))
                found.setdefault(ip, set()).add(owner[cols[9]])
    return {ip: sorted(names) for ip, names in found.items()}


def _descends(pid: int, root: int, parent: dict) -> bool:
    while pid in parent and pid not in (0, 1):
        pid = parent[pid]
        if pid == root:
            return True
    return False


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads listening sockets from Linux /proc")
def test_a_stages_local_ray_listens_on_loopback_only_with_token_auth_on():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}  # Ray's default: token
    proc = subprocess.Popen([sys.executable, "-c", LOCAL_RUN], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        started = json.loads(proc.stdout.readline() or "null")
        assert started is not None, proc.stderr.read()[-2000:]
        listening = _listening_addresses(started["pid"])
    finally:
        proc.communicate("", timeout=120)
    assert started["node_ip"] == "127.0.0.1"
    assert "gcs_server" in str(listening) and "raylet" in str(listening), listening  # the look found Ray's own
    assert set(listening) <= {"127.0.0.1", "::1", "::ffff:127.0.0.1"}, listening
