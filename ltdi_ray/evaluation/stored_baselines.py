"""Meta-trained baselines kept beside the run (``evaluate.baseline.reuse``), so that evaluating again with
the same settings does not meta-train them again.

Meta-training is deterministic given its inputs, and a benchmark evaluates the same baseline several times
(once per step size on validation tasks, then on the test tasks, then off the grid): minutes each on a
2-core machine. An entry is named by a digest of everything the result depends on (the dataset's content,
the task config, the baseline's rule and settings, the start theta, the package version) and holds

    theta.safetensors   the meta-trained theta (D,)
    baseline.json       the inputs, the training record and theta's sha256; written last

Reading checks all three; an entry that disagrees is one clear line, never a silently different baseline.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Optional, Tuple

import torch

import ltdi_ray
from ltdi_ray.config.compose import to_plain
from ltdi_ray.errors import DataError
from ltdi_ray.storage.fs import Location

THETA, RECORD = "theta.safetensors", "baseline.json"


def entry(ev, name: str, rule: str, pool_query: bool) -> Tuple[Location, dict]:
    """Where baseline ``name`` of this evaluation is kept (``<storage.uri>/baselines/<name>-<digest>``) and the
    inputs it is named by."""
    from ltdi_ray.pipelines.train import open_dataset

    manifest = open_dataset(ev.cfg).manifest
    inputs = {"name": name, "rule": rule, "pool_query": pool_query, "version": ltdi_ray.__version__,
              "settings": {k: v for k, v in asdict(ev.cfg.evaluate.baseline).items() if k not in ("cpus", "reuse")},
              "task": to_plain(ev.gen.cfg.task), "num_tasks": manifest["num_tasks"],
              "data_sha256": hashlib.sha256("".join(f["sha256"] for f in manifest["files"]).encode()).hexdigest(),
              "theta0_sha256": hashlib.sha256(ev.base.contiguous().numpy().tobytes()).hexdigest()}
    text = json.dumps(inputs, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    cfg = ev.cfg.storage
    return Location.parse(cfg.uri, cfg.endpoint_url).child("baselines", f"{name}-{digest}"), json.loads(text)


def write(where: Location, inputs: dict, theta: torch.Tensor, record: dict) -> None:
    from safetensors.torch import save

    data = save({"theta": theta.detach().contiguous()})
    where.write_atomic(THETA, data)
    meta = {"inputs": inputs, "record": record, "theta_sha256": hashlib.sha256(data).hexdigest()}
    where.write_atomic(RECORD, json.dumps(meta, indent=1).encode())


def read(where: Location, inputs: dict, dim: int) -> Optional[Tuple[torch.Tensor, dict]]:
    """The kept ``(theta (dim,), record)``, or None when there is none (no ``baseline.json``: an entry whose
    writer stopped before the end is not one)."""
    from safetensors.torch import load

    if not where.exists(RECORD):
        return None
    try:
        meta = json.loads(where.read_bytes(RECORD))
        data = where.read_bytes(THETA)
        ok = meta["inputs"] == inputs and hashlib.sha256(data).hexdigest() == meta["theta_sha256"]
        theta = load(data)["theta"] if ok else None
    except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
        raise DataError(f"kept baseline {where} is unreadable ({type(err).__name__}: {err}); delete it") from None
    if theta is None or theta.shape != (dim,) or not bool(torch.isfinite(theta).all()):
        raise DataError(f"kept baseline {where} does not match its record (inputs, sha256 or shape); delete it")
    return theta, {**meta["record"], "reused_from": str(where)}
