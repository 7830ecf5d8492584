"""One writer per artifact: a second writer of the same artifact is refused in one line naming the owner.

Every lease is ``<run root>/_lease-<artifact>.json``; only writers take one, readers never look at it.

- Local disk: an exclusive ``flock`` on that file, which holds the owner (stage, host, pid, start) for the
  refusal. The kernel drops the lock when the owner exits or dies, so a dead owner never blocks anyone.
- S3 has no locks: the lease is an object created with a conditional PUT (``If-None-Match: *``) and renewed
  by its owner every ``ttl_s / 4`` (``If-Match`` on its own ETag). One not renewed for ``ttl_s``, measured
  on the store's clock (its ``Date`` against the object's ``Last-Modified``), belongs to a dead owner:
  the next writer takes it over with ``If-Match`` on the stale ETag, so of two racing writers one wins.
  On the owner's own host a dead owner is known at once (its pid is gone, or it is this process and the
  lease is not one it holds): its lease is taken over without waiting.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from email.utils import parsedate_to_datetime
from typing import Iterator, Optional

from ltdi_ray.errors import StorageError
from ltdi_ray.storage.fs import Location

log = logging.getLogger("ltdi_ray")
_HELD: set = set()  # tokens of the leases this process holds


def lease_name(artifact: str) -> str:
    return f"_lease-{artifact.replace('/', '-')}.json"


class Lease:
    """The write lease of ``artifact`` under ``root``, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, root: Location, artifact: str, stage: str, ttl_s: float):
        self.root, self.artifact, self.stage, self.ttl_s = root, artifact, stage, ttl_s
        self.where = root.child(lease_name(artifact))
        self.owner = {"stage": stage, "host": socket.gethostname(), "pid": os.getpid(),
                      "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "token": uuid.uuid4().hex}
        self.lost: Optional[str] = None  # why the lease was lost while held (S3: renewal refused)
        self._fd: Optional[int] = None
        self._etag: Optional[str] = None
        self._stop = threading.Event()
        self._renewer: Optional[threading.Thread] = None

    # -- the refusal ------------------------------------------------------------------------------

    def _refuse(self, owner: Optional[dict], extra: str = "") -> StorageError:
        who = (f"{owner.get('stage', '?')} (host {owner.get('host', '?')}, pid {owner.get('pid', '?')}, "
               f"started {owner.get('started', '?')})" if owner else "another run (starting up)")
        return StorageError(f"{self.artifact} under {self.root} is being written by {who}{extra}; wait for it to "
                            f"finish or use another storage.uri (lease {self.where})")

    # -- local disk --------------------------------------------------------------------------------

    def _acquire_local(self) -> None:
        import fcntl

        path = self.where.path
        while True:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise StorageError(f"cannot take the write lease {path}: {err.strerror or err}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raw = os.pread(fd, 4096, 0)
                os.close(fd)
                raise self._refuse(_parse(raw)) from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file its releasing owner unlinked while we waited for it
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.owner).encode(), 0)
        self._fd = fd

    def _release_local(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.where.path)  # while still locked: a waiter holding the old file sees it is gone
        os.close(self._fd)
        self._fd = None

    # -- S3 ----------------------------------------------------------------------------------------

    def _key(self) -> dict:
        bucket, key = self.where.path.split("/", 1)
        return {"Bucket": bucket, "Key": key}

    def _put(self, **condition) -> str:
        body = json.dumps({**self.owner, "ttl_s": self.ttl_s}).encode()
        reply = self.root.fs.call_s3("put_object", **self._key(), Body=body, **condition)
        return reply["ETag"]

    def _held_for(self) -> tuple:
        """The stored lease: ``(etag, owner, seconds since its last renewal on the store's clock)``."""
        head = self.root.fs.call_s3("head_object", **self._key())
        now = parsedate_to_datetime(head["ResponseMetadata"]["HTTPHeaders"]["date"])
        owner = _parse(self.root.fs.cat_file(self.where.path))
        return head["ETag"], owner, (now - head["LastModified"]).total_seconds()

    def _acquire_s3(self) -> None:
        for _ in range(3):  # a lease released or taken over between our calls: look again
            try:
                self._etag = self._put(IfNoneMatch="*")
                break
            except FileExistsError:
                pass
            try:
                etag, owner, idle = self._held_for()
            except FileNotFoundError:
                continue
            ttl = float((owner or {}).get("ttl_s", self.ttl_s))
            if idle < ttl and not _dead_here(owner):
                raise self._refuse(owner, f", renewed {idle:.0f} s ago")
            try:
                self._etag = self._put(IfMatch=etag)
            except (FileExistsError, FileNotFoundError):
                continue
            log.warning("lease: took over %s from %s (pid %s on %s, dead), not renewed for %.0f s", self.where,
                        owner.get("stage") if owner else "?", (owner or {}).get("pid"), (owner or {}).get("host"), idle)
            break
        else:
            raise self._refuse(None)
        self._renewer = threading.Thread(target=self._renew, name=f"lease-{self.artifact}", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                self._etag = self._put(IfMatch=self._etag)
            except Exception as err:  # refused (taken over) or the store is down: the writer must not publish
                self.lost = f"{type(err).__name__}: {err}"
                log.error("lease: lost %s (%s)", self.where, self.lost)
                return

    def _release_s3(self) -> None:
        self._stop.set()
        self._renewer.join()
        with contextlib.suppress(FileNotFoundError):
            if self.root.fs.call_s3("head_object", **self._key())["ETag"] == self._etag:
                self.root.fs.call_s3("delete_object", **self._key())

    # -- both --------------------------------------------------------------------------------------

    def acquire(self) -> "Lease":
        self.root.check_reachable()
        if self.root.is_s3:
            self.root._call(self._acquire_s3, f"taking the write lease {self.where}")
        else:
            self._acquire_local()
        _HELD.add(self.owner["token"])
        return self

    def check(self) -> None:
        """Raise before publishing if the lease was lost while held (another writer may own the artifact)."""
        if self.lost:
            raise StorageError(f"lost the write lease {self.where} ({self.lost}); nothing was published: run again")

    def release(self) -> None:
        """Give the lease up. A store that cannot be reached is only logged: the error that ended the run
        is the one to report, and the lease expires after ``ttl_s`` (at once for a rerun on this host)."""
        _HELD.discard(self.owner["token"])
        if not self.root.is_s3:
            self._release_local()
            return
        try:
            self.root._call(self._release_s3, f"releasing the write lease {self.where}")
        except StorageError as err:
            log.warning("lease: %s; it expires %.0f s after its last renewal", err, self.ttl_s)


def _dead_here(owner: Optional[dict]) -> bool:
    """Whether ``owner`` ran on this host and is gone: its pid has exited, or it is this process's and not held."""
    if not owner or owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    if owner["pid"] == os.getpid():
        return owner.get("token") not in _HELD
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _parse(raw: bytes) -> Optional[dict]:
    try:
        owner = json.loads(raw)
    except ValueError:
        return None
    return owner if isinstance(owner, dict) else None


@contextlib.contextmanager
def writer_lease(root: Location, artifact: str, stage: str, ttl_s: float) -> Iterator[Lease]:
    """Hold the write lease of ``artifact`` under ``root`` for the ``with`` block (see the module docstring)."""
    lease = Lease(root, artifact, stage, ttl_s).acquire()
    try:
        yield lease
    finally:
        lease.release()
