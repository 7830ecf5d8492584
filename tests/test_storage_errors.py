"""Filesystem faults are one line naming the path and the cause, and leave no temporary file behind."""

import subprocess
import sys

import pytest

from ltdi_ray.errors import StorageError
from ltdi_ray.storage.fs import Location

# A file size limit makes the kernel refuse a write part-way, as a full disk does (EFBIG instead of ENOSPC).
WRITE_PAST_THE_LIMIT = """
import resource, signal, sys
from ltdi_ray.errors import StorageError
from ltdi_ray.storage.fs import Location
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    Location.parse(sys.argv[1]).write_atomic("big.bin", b"x" * 65536)
except StorageError as err:
    print(err)
"""


def test_a_write_the_disk_refuses_part_way_is_one_line_and_leaves_no_temporary_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "big.bin").write_bytes(b"the previous version")
    out = subprocess.run([sys.executable, "-c", WRITE_PAST_THE_LIMIT, str(run)], capture_output=True, text=True)
    assert out.stdout.strip() == f"writing {run}/big.bin: File too large", out.stderr
    assert sorted(p.name for p in run.iterdir()) == ["big.bin"]  # no .tmp-* left
    assert (run / "big.bin").read_bytes() == b"the previous version"  # the old file is untouched


def test_a_path_through_a_file_is_one_line_naming_it(tmp_path):
    (tmp_path / "taken").write_text("a file, not a directory")
    loc = Location.parse(str(tmp_path / "taken" / "run"))
    for action in (lambda: loc.write_atomic("x.json", b"{}"), lambda: loc.read_bytes("x.json")):
        with pytest.raises(StorageError, match=rf"^(writing|reading) {tmp_path}/taken/run/x.json: Not a directory$"):
            action()


def test_a_directory_where_a_file_should_be_is_one_line_naming_it(tmp_path):
    (tmp_path / "run" / "x.json").mkdir(parents=True)
    loc = Location.parse(str(tmp_path / "run"))
    for action, verb in ((lambda: loc.write_atomic("x.json", b"{}"), "writing"), (lambda: loc.read_bytes("x.json"), "reading")):
        with pytest.raises(StorageError, match=rf"^{verb} {tmp_path}/run/x.json: Is a directory$"):
            action()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["x.json"]
