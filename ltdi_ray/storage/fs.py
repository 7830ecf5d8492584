"""Storage locations: a local path or ``s3://bucket/prefix`` behind one fsspec interface.

S3 goes through s3fs with an optional endpoint URL (MinIO, Ceph, any S3-compatible store).
Credentials come only from the standard AWS chain (environment, profile, instance role):
nothing here accepts, stores or prints a key.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from functools import cached_property
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

import fsspec

from ltdi_ray.errors import LtdiError, StorageError

# Fail fast on a dead endpoint instead of botocore's default minutes of retries.
_S3_CONFIG = {"connect_timeout": 5, "read_timeout": 120, "retries": {"max_attempts": 4, "mode": "standard"}}


def redact(url: str) -> str:
    """Drop any ``user:password@`` from a URL before it is printed or saved."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))


@dataclass(frozen=True)
class Location:
    """A directory-like place in storage. Picklable: Ray workers reopen the filesystem lazily."""

    uri: str  # absolute local path, or s3://bucket/prefix
    endpoint_url: Optional[str] = None

    @classmethod
    def parse(cls, uri: str, endpoint_url: Optional[str] = None) -> "Location":
        """Normalise ``uri``: relative local paths become absolute (Ray workers change directory)."""
        if uri.startswith("s3://"):
            body = uri[len("s3://"):].strip("/")
            if not body:
                raise StorageError(f"storage URI {uri!r} names no bucket")
            if any(s in (".", "..") for s in body.split("/")):
                raise StorageError(f"storage URI {uri!r}: '.' and '..' segments are not allowed in an S3 key")
            return cls(f"s3://{body}", endpoint_url)
        if "://" in uri and not uri.startswith("file://"):
            raise StorageError(f"storage URI {uri!r}: only local paths, file:// and s3:// are supported")
        return cls(os.path.abspath(os.path.expanduser(uri.removeprefix("file://"))), None)

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    @property
    def path(self) -> str:
        """The path as the filesystem object expects it (no scheme)."""
        return self.uri[len("s3://"):] if self.is_s3 else self.uri

    @cached_property
    def fs(self) -> fsspec.AbstractFileSystem:
        if not self.is_s3:
            return fsspec.filesystem("file", auto_mkdir=True)
        import s3fs

        client_kwargs = {"endpoint_url": self.endpoint_url} if self.endpoint_url else {}
        return s3fs.S3FileSystem(client_kwargs=client_kwargs, config_kwargs=_S3_CONFIG)

    def child(self, *parts: str) -> "Location":
        """The location ``parts`` below this one; refuses to leave it.

        Names also come from stored files (a manifest's file list) and the config (``tune.name``),
        so a ``..``, ``.``, empty or absolute segment is an error rather than a path outside the root.
        """
        for part in parts:
            segments = part.split("/")
            if not part or any(s in ("", ".", "..") for s in segments) or "\\" in part:
                raise StorageError(f"path {part!r} under {self.uri} is not a plain relative name "
                                   "(no '..', '.', empty or absolute segments)")
        return Location("/".join([self.uri.rstrip("/"), *parts]), self.endpoint_url)

    def __str__(self) -> str:
        return self.uri

    def __getstate__(self):  # never pickle the live filesystem (sockets, event loops)
        return {"uri": self.uri, "endpoint_url": self.endpoint_url}

    def __setstate__(self, state):
        object.__setattr__(self, "uri", state["uri"])
        object.__setattr__(self, "endpoint_url", state["endpoint_url"])

    # -- checked operations: every failure becomes one line naming the location ------------

    def check_reachable(self) -> None:
        """Fail with a clear line if the bucket is missing, the endpoint is down or access is denied."""
        if not self.is_s3:
            return
        bucket = self.path.split("/", 1)[0]
        where = f" at endpoint {redact(self.endpoint_url)}" if self.endpoint_url else ""
        try:
            self.fs.call_s3("head_bucket", Bucket=bucket)
        except FileNotFoundError:
            raise StorageError(f"bucket '{bucket}' not found{where}; create it first or fix storage.uri") from None
        except PermissionError as err:
            raise StorageError(f"access to bucket '{bucket}'{where} denied: {err}") from None
        except Exception as err:  # botocore raises many unrelated types for a dead endpoint
            raise StorageError(f"cannot reach S3{where} for bucket '{bucket}': {type(err).__name__}: {err}") from None

    def exists(self, name: str) -> bool:
        return self._call(lambda: self.fs.exists(self._fresh(self.child(name).path)), f"checking {self.child(name)}")

    def read_bytes(self, name: str) -> bytes:
        return self._call(lambda: self.fs.cat_file(self._fresh(self.child(name).path)), f"reading {self.child(name)}")

    def _fresh(self, path: str) -> str:
        """``path``, with s3fs's cached listing of its directory dropped: other processes (Ray
        workers) write here, and a stale listing makes s3fs report an existing object as missing."""
        if self.is_s3:
            self.fs.invalidate_cache(path)
        return path

    def write_atomic(self, name: str, data: bytes) -> None:
        """Make ``name`` appear complete or not at all.

        Locally: write a hidden temp file, fsync, rename. On S3 one PUT (or a multipart upload)
        only becomes visible when it completes, so the object is written in place.
        """
        target = self.child(name)
        if self.is_s3:
            self._call(lambda: self.fs.pipe_file(target.path, data), f"writing {target}")
            return
        directory, base = os.path.split(target.path)
        tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}-{base}")

        def write() -> None:
            os.makedirs(directory, exist_ok=True)
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, target.path)
            except BaseException:  # a full disk, a kill signal: leave no half-written temporary file behind
                with contextlib.suppress(OSError):
                    os.remove(tmp)
                raise

        self._call(write, f"writing {target}")

    def list(self, subdir: str = "") -> list:
        """Names of the files directly under ``subdir`` (empty when it does not exist)."""
        loc = self.child(subdir) if subdir else self
        try:
            entries = self.fs.ls(self._fresh(loc.path), detail=False)
        except FileNotFoundError:
            return []
        except Exception as err:
            raise StorageError(f"listing {loc}: {type(err).__name__}: {err}") from None
        return sorted(os.path.basename(e.rstrip("/")) for e in entries)

    def remove(self, name: str) -> None:
        target = self.child(name)
        self._call(lambda: self.fs.rm_file(target.path), f"removing {target}")

    def _call(self, fn, what: str):
        try:
            return fn()
        except (FileNotFoundError, LtdiError):
            raise
        except PermissionError as err:
            raise StorageError(f"{what}: access denied: {err}") from None
        except OSError as err:  # a full disk, a read-only file system, a path through a file: the cause, one line
            raise StorageError(f"{what}: {err.strerror or err}") from None
        except Exception as err:  # botocore's own types (EndpointConnectionError, ...) after its bounded retries
            if not self.is_s3:
                raise
            raise StorageError(f"{what}: {type(err).__name__}: {err}") from None
