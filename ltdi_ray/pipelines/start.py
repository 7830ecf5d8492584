"""Where the trajectories start: theta_0, made once per dataset and stored in it.

``trajectory.theta0=shared`` is one draw of the base network's initialisation; ``reptile`` is an
initialisation meta-learned by Reptile on the training tasks (``start`` keys), so that the
trajectories are short, tight and end far lower (README "Method choices"). Either is written into
the dataset as ``_theta0.safetensors`` before the first trajectory (its settings and training
record in the file's metadata, its checksum in the manifest), so a resumed or extended collection
continues from the same start and train and the generator read it from there.
``per_task`` and ``prototype`` start every task elsewhere and store nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Optional, Tuple

import numpy as np
import torch

from ltdi_ray.config.compose import to_plain
from ltdi_ray.config.schema import Config
from ltdi_ray.errors import DataError
from ltdi_ray.meta.baselines import MetaInitConfig, train_meta_init
from ltdi_ray.meta.trainer import draw_picks
from ltdi_ray.nets.paramspec import ParamSpec
from ltdi_ray.storage.fs import Location
from ltdi_ray.tasks import TaskFamily, make_family
from ltdi_ray.trajectories import initial_theta, make_loss
from ltdi_ray.trajectories.batch import SHARED_MODES, pick_points

log = logging.getLogger("ltdi_ray")
START = "_theta0.safetensors"


def meta_init(loss, theta0: torch.Tensor, pools: Tuple[torch.Tensor, torch.Tensor], classes: int, shots: int,
              mcfg: MetaInitConfig) -> Tuple[torch.Tensor, dict]:
    """Train MAML / first-order MAML / Reptile from ``theta0`` ``(D,)`` on training pools ``(N, P, ...)``:
    each outer step draws ``mcfg.meta_batch`` tasks, ``shots`` support and some query points per class
    (``classes`` per pool). Returns (theta ``(D,)``, settings and first / last outer loss)."""
    px, py = pools
    queries = 10 if classes == 1 else min(5, px.shape[1] // classes - shots)  # per class

    def sample_batch(step: int):
        rng = np.random.default_rng([mcfg.seed, step, 7])
        idx = torch.as_tensor(rng.integers(0, len(px), size=mcfg.meta_batch))
        pick = torch.as_tensor(draw_picks(rng, mcfg.meta_batch, px.shape[1], shots + queries, classes))
        s, q = pick[:, :, :shots].flatten(1), pick[:, :, shots:].flatten(1)
        return pick_points(px, idx, s), pick_points(py, idx, s), pick_points(px, idx, q), pick_points(py, idx, q)

    tic = time.perf_counter()
    theta, history = train_meta_init(loss, theta0, sample_batch, mcfg)
    settings = {**mcfg.describe(), "train_tasks": len(px), "support": shots * classes, "outer_query": queries * classes,
                "meta_train_s": round(time.perf_counter() - tic, 1),
                "outer_loss_first_last": [round(history[0], 4), round(float(np.mean(history[-50:])), 4)]}
    return theta, settings


def support_shots(family: TaskFamily) -> int:
    """K: support examples per class of the family's episodes."""
    return family.fields()["support_idx"][0][0] // family.pool_classes


def compute_start(cfg: Config, family: Optional[TaskFamily] = None) -> Tuple[Optional[torch.Tensor], dict]:
    """theta_0 ``(D,)`` and its record for ``cfg.trajectory.theta0``; ``(None, {})`` for per-task starts."""
    t = cfg.trajectory
    if t.theta0 not in SHARED_MODES:
        return None, {}
    family = family or make_family(cfg.task, cfg.storage.endpoint_url)
    theta = initial_theta(family, t.init_seed)
    record = {"mode": t.theta0, "init_seed": t.init_seed}
    if t.theta0 == "reptile":
        s = cfg.start
        log.info("collect: meta-training the trajectories' start (Reptile, %d steps on %d tasks)", s.meta_steps, s.tasks)
        eps = family.sample_many(cfg.collect.split, range(s.tasks), cfg.collect.seed)
        net = family.build_net()
        loss = make_loss(net, ParamSpec.from_module(net), family.loss)
        pools = family.to_torch(eps["pool_x"]), family.targets_to_torch(eps["pool_y"])
        mcfg = MetaInitConfig(method="reptile", meta_steps=s.meta_steps, meta_batch=s.meta_batch,
                              inner_steps=s.inner_steps, inner_lr=s.inner_lr, outer_lr=s.outer_lr, seed=s.seed)
        theta, settings = meta_init(loss, theta, pools, family.pool_classes, support_shots(family), mcfg)
        record.update(start=to_plain(s), trained=settings)
    return theta.detach().float().contiguous(), record


def _entry(record: dict, digest: str) -> dict:
    """The manifest's ``theta0`` entry: the record plus the file's name and sha256."""
    return {**record, "path": START, "sha256": digest}


def ensure_start(cfg: Config, loc: Location, family: Optional[TaskFamily] = None) -> Tuple[Optional[torch.Tensor], dict]:
    """The dataset at ``loc``'s theta_0 and manifest entry: read when stored, else computed and written."""
    if cfg.trajectory.theta0 not in SHARED_MODES:
        return None, {}
    stored = read_start(loc)
    if stored is not None:
        return stored
    theta, record = compute_start(cfg, family)
    from safetensors.torch import save

    raw = save({"theta0": theta}, metadata={"record": json.dumps(record, sort_keys=True)})
    loc.write_atomic(START, raw)
    return theta, _entry(record, hashlib.sha256(raw).hexdigest())


def read_start(loc: Location, sha256: Optional[str] = None) -> Optional[Tuple[torch.Tensor, dict]]:
    """``(theta_0 (D,), entry)`` stored in the dataset at ``loc`` (entry: its record, name and sha256),
    or None; with ``sha256`` (the manifest's) a file that does not match it is a :class:`DataError`."""
    from safetensors.torch import load

    try:
        raw = loc.read_bytes(START)
    except FileNotFoundError:
        return None
    digest = hashlib.sha256(raw).hexdigest()
    if sha256 is not None and digest != sha256:
        raise DataError(f"{loc.child(START)} does not match the checksum in the dataset's manifest")
    try:
        theta = load(raw)["theta0"]
        header_len = int.from_bytes(raw[:8], "little")  # safetensors: u64 header size, JSON header
        record = json.loads(json.loads(raw[8:8 + header_len])["__metadata__"]["record"])
    except Exception as err:  # noqa: BLE001 - any unreadable file is one message
        raise DataError(f"{loc.child(START)} is not a readable theta_0 file ({type(err).__name__}: {err})") from None
    return theta, _entry(record, digest)


def dataset_start(loc: Location, manifest: dict) -> Optional[torch.Tensor]:
    """The theta_0 ``(D,)`` a complete dataset's manifest names (checked against its checksum); None
    for datasets whose tasks start elsewhere or that predate the stored start (their ``shared``
    start is the base net's init under ``init_seed``)."""
    entry = manifest.get("theta0", {})
    if "sha256" not in entry:
        return None
    stored = read_start(loc, entry["sha256"])
    if stored is None:
        raise DataError(f"{loc.child(START)} is missing: the dataset's manifest names it as the trajectories' start")
    return stored[0]
