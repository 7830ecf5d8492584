"""Security: no pickle is ever loaded, storage names stay under their root, credentials never leak."""

import ast
import json
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
