"""The generator checkpoint: tensors in safetensors, facts and config in JSON, no pickles.

A checkpoint directory (local or s3://) holds

    model-<sha>.safetensors      the encoder + denoiser state dict
    stats-<sha>.safetensors      normalisation mean/std (D,) and the raw theta_0 (D,)
    train_state-<sha>.pt         optional: optimiser state, counters (tensors and numbers only, loaded with
                                 ``weights_only=True``)
    generator.json               format, config, ParamSpec, data facts, metrics, and the name, size and
                                 sha256 of each file above; written last

Each file is named by its content, so publishing over an existing checkpoint never overwrites a file the
current ``generator.json`` names: a crash mid-publish leaves the old checkpoint (its record and files
intact) or the new one, never a mix. Files of the generation before the current one are kept, so a reader
that read the old record a moment ago still finds its files; older ones are removed. Every file is checked
against its sha256 and its tensors checked finite when read.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from typing import Dict, Optional

import torch

from ltdi_ray.errors import DataError
from ltdi_ray.storage.artifact import check_record, read_json
from ltdi_ray.storage.fs import Location

FORMAT, FORMAT_VERSION = "ltdi_ray.generator", 3  # 3: content-named files with their sha256 in generator.json
META = "generator.json"
PARTS = {"model": "safetensors", "stats": "safetensors", "train_state": "pt"}
_FILE = re.compile(r"^(model|stats|train_state)-[0-9a-f]{16}\.(safetensors|pt)$")


def write_checkpoint(loc: Location, model: torch.nn.Module, stats: Dict[str, torch.Tensor], meta: dict,
                     train_state: Optional[dict] = None) -> None:
    """Write a checkpoint of ``model`` with ``stats`` and the record ``meta`` at ``loc`` (see the module docstring)."""
    from safetensors.torch import save

    blobs = {"model": save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}),
             "stats": save({k: v.detach().cpu().contiguous().float() for k, v in stats.items()})}
    if train_state is not None:
        buf = io.BytesIO()
        torch.save(train_state, buf)
        blobs["train_state"] = buf.getvalue()
    _publish(loc, blobs, meta)


def _publish(loc: Location, blobs: Dict[str, bytes], meta: dict) -> None:
    try:
        previous = {f["path"] for f in read_meta(loc)["files"].values()}
    except DataError:  # nothing there yet, or not readable: nothing to keep for readers
        previous = set()
    files = {}
    for part, data in blobs.items():
        sha = hashlib.sha256(data).hexdigest()
        files[part] = {"path": f"{part}-{sha[:16]}.{PARTS[part]}", "sha256": sha, "bytes": len(data)}
        loc.write_atomic(files[part]["path"], data)
    record = {**meta, "format": FORMAT, "format_version": FORMAT_VERSION, "files": files}
    loc.write_atomic(META, json.dumps(record, indent=1).encode())  # last: the switch to the new checkpoint
    keep = previous | {f["path"] for f in files.values()}
    for name in loc.list():
        if _FILE.match(name) and name not in keep:
            loc.remove(name)


def read_meta(loc: Location) -> dict:
    """The checkpoint's JSON record; one clear line if it is absent, malformed or foreign."""
    meta = read_json(loc, META)
    if meta is None:
        raise DataError(f"no generator checkpoint at {loc}: {META} is missing (training unfinished, or the "
                        "wrong directory: pass the generator_uri printed by `train`)")
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{loc.child(META)} is not a {FORMAT} v{FORMAT_VERSION} checkpoint")
    check_record(meta, ("files", "config", "param_spec", "checkpoint_steps", "epoch", "metrics"), loc.child(META))
    if not isinstance(meta["files"], dict) or any(p not in PARTS or not isinstance(f, dict) or not _FILE.match(
            str(f.get("path"))) or not isinstance(f.get("sha256"), str) for p, f in meta["files"].items()):
        raise DataError(f"{loc.child(META)} names its files wrongly (expected model/stats/train_state records)")
    return meta


def read_file(loc: Location, meta: dict, part: str) -> Optional[bytes]:
    """The bytes of checkpoint file ``part`` as ``meta`` records them (None if it records none), sha256-checked."""
    record = meta["files"].get(part)
    if record is None:
        return None
    where = loc.child(record["path"])
    try:
        data = loc.read_bytes(record["path"])
    except FileNotFoundError:
        raise DataError(f"generator checkpoint {loc} is incomplete: {record['path']} is missing") from None
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise DataError(f"{where} fails the checksum {META} records for it (sha256 {record['sha256'][:12]}...)")
    return data


def read_tensors(loc: Location, meta: dict, part: str) -> Dict[str, torch.Tensor]:
    """The tensors of ``part`` (``model`` or ``stats``), each checked finite."""
    from safetensors.torch import load

    data = read_file(loc, meta, part)
    if data is None:
        raise DataError(f"generator checkpoint {loc} is incomplete: {META} names no {part} file")
    where = loc.child(meta["files"][part]["path"])
    try:
        tensors = load(data)
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise DataError(f"{where} is not a readable safetensors file: {err}") from None
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise DataError(f"{where} holds non-finite values in {', '.join(sorted(bad)[:3])} (a diverged run?)")
    return tensors


def read_train_state(loc: Location, meta: dict) -> Optional[dict]:
    """Optimiser state and counters, or None for a generator-only checkpoint."""
    data = read_file(loc, meta, "train_state")
    return None if data is None else torch.load(io.BytesIO(data), weights_only=True)


def copy_checkpoint(src: Location, dst: Location) -> None:
    """Publish the checkpoint at ``src`` at ``dst``: every file verified on the way, ``generator.json`` last."""
    meta = read_meta(src)
    blobs = {part: read_file(src, meta, part) for part in meta["files"]}
    _publish(dst, blobs, {k: v for k, v in meta.items() if k not in ("format", "format_version", "files")})
