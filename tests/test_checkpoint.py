"""Generator checkpoints: content-named files with their checksums, publishing that a crash cannot leave mixed."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from ltdi_ray.errors import DataError
from ltdi_ray.generator.checkpoint import META, copy_checkpoint, read_meta, read_tensors, write_checkpoint
from ltdi_ray.storage.fs import Location

PUBLISH_FOREVER = """
import sys
from ltdi_ray.generator.checkpoint import copy_checkpoint
from ltdi_ray.storage.fs import Location
sources, dst = [Location.parse(p) for p in sys.argv[1:3]], Location.parse(sys.argv[3])
print("publishing", flush=True)
i = 0
while True:
    copy_checkpoint(sources[i % 2], dst)
    i += 1
"""


def _checkpoint(loc: Location, epoch: int, width: int = 64, state_mb: int = 0) -> torch.nn.Module:
    torch.manual_seed(epoch)
    model = torch.nn.Linear(width, width)
    stats = {"mean": torch.zeros(3), "std": torch.ones(3), "theta0": torch.full((3,), float(epoch))}
    meta = {"config": {}, "param_spec": {}, "checkpoint_steps": [], "epoch": epoch, "metrics": {}}
    write_checkpoint(loc, model, stats, meta, {"epoch": epoch, "moments": torch.full((state_mb * 2**18,), float(epoch))})
    return model


def test_publishing_keeps_the_previous_generation_for_readers_and_removes_older_ones(tmp_path):
    sources = [Location.parse(str(tmp_path / f"src{i}")) for i in range(3)]
    models = [_checkpoint(loc, i) for i, loc in enumerate(sources)]
    dst = Location.parse(str(tmp_path / "generator"))
    names = []
    for src in sources:
        copy_checkpoint(src, dst)
        names.append({f["path"] for f in read_meta(dst)["files"].values()})
    assert set(dst.list()) == {META} | names[1] | names[2]  # the first generation is gone
    meta = read_meta(dst)
    assert meta["epoch"] == 2
    assert torch.equal(read_tensors(dst, meta, "model")["weight"], models[2].weight.detach())


def test_a_foreign_or_malformed_record_is_one_line(tmp_path):
    loc = Location.parse(str(tmp_path / "generator"))
    _checkpoint(loc, 0)
    meta = json.loads(loc.read_bytes(META))
    for bad, why in [(b"[1, 2]", "a JSON list, not an object"), (b"\xff\xfe", "not valid JSON"),
                     (json.dumps({**meta, "files": {"model": {"path": "../x"}}}).encode(), "names its files wrongly"),
                     (json.dumps({k: v for k, v in meta.items() if k != "epoch"}).encode(), "it lacks epoch")]:
        loc.write_atomic(META, bad)
        with pytest.raises(DataError, match=why) as err:
            read_meta(loc)
        assert "\n" not in str(err.value)


def _files(path) -> dict:
    """``{name: mtime}`` of the published files in ``path`` (temporary files of a write in progress left out)."""
    return {e.name: e.stat().st_mtime_ns for e in os.scandir(path) if not e.name.startswith(".tmp-")}


@pytest.mark.parametrize("moment", ["first file of a publish landed", "random 1", "random 2"])
def test_a_publish_killed_at_any_moment_leaves_the_old_checkpoint_or_the_new_one(tmp_path, moment):
    sources = [Location.parse(str(tmp_path / f"src{i}")) for i in range(2)]
    # big optimiser states, written after the model: a publish spends a while between its first file and its record
    models = [_checkpoint(loc, i, width=300, state_mb=32) for i, loc in enumerate(sources)]
    dst = tmp_path / "generator"
    proc = subprocess.Popen([sys.executable, "-c", PUBLISH_FOREVER, *(s.uri for s in sources), str(dst)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "publishing"
    if moment.startswith("random"):
        time.sleep(random.Random(moment).uniform(0.5, 2.0))
    else:
        while not (dst / META).exists():
            time.sleep(0.001)
        published = _files(dst)
        while _files(dst) == published:
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    loc = Location.parse(str(dst))
    meta = read_meta(loc)
    assert torch.equal(read_tensors(loc, meta, "model")["weight"], models[meta["epoch"]].weight.detach())
    assert torch.equal(read_tensors(loc, meta, "stats")["theta0"], torch.full((3,), float(meta["epoch"])))
