"""theta_0: where trajectories and the generator's chains start (``trajectory.theta0``), in one place.

* ``shared``: one draw of the base network's initialisation (``trajectory.init_seed``) for every task;
* ``reptile``: one initialisation meta-learned by Reptile on the training tasks (``reptile_start.*``), so
  that trajectories are short, tight and end far lower (docs/results/method-choices.md);
* ``per_task``: each task's own draw under its task seed (a new task's chain starts at the shared draw);
* ``prototype``: each task starts at weights its family computes from the support
  (``TaskFamily.support_start``; Omniglot heads: the ProtoNet head), and so does its chain.

A single start (shared, reptile) is written into the dataset as ``_theta0.safetensors`` before the
first trajectory (settings and training record in the file's metadata, its checksum in the
manifest), so a resumed or extended collection continues from it and train and the generator read
it from there. The other modes store nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Tuple

import torch

from ltdi_ray.base_nets.paramspec import ParamSpec
from ltdi_ray.errors import DataError
from ltdi_ray.storage.fs import Location
from ltdi_ray.tasks.base import TaskFamily, task_seed

log = logging.getLogger("ltdi_ray")
FILE = "_theta0.safetensors"
MODES = ("shared", "reptile", "per_task", "prototype")  # trajectory.theta0
SINGLE = ("shared", "reptile")  # the modes whose tasks all start at one stored theta_0


def initial_theta(family: TaskFamily, seed: int) -> torch.Tensor:
    """The base network's own initialisation ``(D,)`` drawn under ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = family.build_net()
    return ParamSpec.from_module(net).flatten(dict(net.named_parameters())).detach()


@dataclass
class Theta0:
    """A dataset's rule for starting points: ``mode`` and ``shared`` ``(D,)`` (the single start; for
    ``per_task`` and ``prototype``, the base net's init under ``init_seed``, where new tasks' chains of
    ``per_task`` start and what evaluate's init baselines use)."""

    mode: str
    shared: torch.Tensor

    def to(self, device) -> "Theta0":
        return Theta0(self.mode, self.shared.to(device))

    def for_tasks(self, family: TaskFamily, ids: Sequence[int], split: str, base_seed: int,
                  sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` trajectory starts of tasks ``ids`` of ``split`` with supports ``(sx, sy)``
        (network inputs)."""
        if self.mode == "per_task":
            seeds = [task_seed(family.name, split, int(i), base_seed) for i in ids]
            return torch.stack([initial_theta(family, s) for s in seeds]).to(self.shared.device)
        return self.for_supports(family, sx, sy)

    def for_supports(self, family: TaskFamily, sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` chain starts of new tasks from their supports ``(sx, sy)`` (network inputs)."""
        if self.mode == "prototype":
            return family.support_start(sx, sy)
        return self.shared.to(sx.device).expand(sx.shape[0], -1)


def compute_start(cfg, family: TaskFamily) -> Tuple[torch.Tensor, dict]:
    """The single theta_0 ``(D,)`` of ``cfg.trajectory.theta0`` (shared or reptile) and its record."""
    from ltdi_ray.meta.meta_init import meta_train_on_pools
    from ltdi_ray.progress import progress
    from ltdi_ray.trajectories.inner import make_functional

    t = cfg.trajectory
    theta = initial_theta(family, t.init_seed)
    record = {"mode": t.theta0, "init_seed": t.init_seed}
    if t.theta0 == "reptile":
        s = cfg.reptile_start
        log.info("collect: meta-training the trajectories' start (Reptile, %d steps on %d tasks)", s.meta_steps, s.tasks)
        episodes = family.sample_many(cfg.collect.split, range(s.tasks), cfg.collect.seed)
        net = family.build_net()
        loss = make_functional(net, ParamSpec.from_module(net), family.loss)
        pools = family.to_torch(episodes["pool_x"]), family.targets_to_torch(episodes["pool_y"])
        with progress(total=s.meta_steps, desc="reptile start", unit="step") as bar:
            theta, trained = meta_train_on_pools(loss, theta, pools, family.pool_classes, family.shots, "reptile",
                                                 s, on_step=lambda: bar.update())
        record.update(start=asdict(s), trained=trained)
    return theta.detach().float().contiguous(), record


def _entry(record: dict, digest: str) -> dict:
    """The manifest's ``theta0`` entry: the record plus the file's name and sha256."""
    return {**record, "path": FILE, "sha256": digest}


def ensure_stored(cfg, loc: Location, family: TaskFamily) -> Tuple[Optional[torch.Tensor], dict]:
    """The dataset at ``loc``'s single theta_0 and manifest entry: read when stored, else computed and
    written; ``(None, {})`` for modes that store nothing."""
    if cfg.trajectory.theta0 not in SINGLE:
        return None, {}
    stored = read_stored(loc)
    if stored is not None:
        return stored
    theta, record = compute_start(cfg, family)
    from safetensors.torch import save

    raw = save({"theta0": theta}, metadata={"record": json.dumps(record, sort_keys=True)})
    loc.write_atomic(FILE, raw)
    return theta, _entry(record, hashlib.sha256(raw).hexdigest())


def read_stored(loc: Location, sha256: Optional[str] = None) -> Optional[Tuple[torch.Tensor, dict]]:
    """``(theta_0 (D,), entry)`` stored in the dataset at ``loc`` (entry: its record, name and sha256),
    or None; with ``sha256`` (the manifest's) a file that does not match it is a :class:`DataError`."""
    from safetensors.torch import load

    try:
        raw = loc.read_bytes(FILE)
    except FileNotFoundError:
        return None
    digest = hashlib.sha256(raw).hexdigest()
    if sha256 is not None and digest != sha256:
        raise DataError(f"{loc.child(FILE)} does not match the checksum in the dataset's manifest")
    try:
        theta = load(raw)["theta0"]
        header_len = int.from_bytes(raw[:8], "little")  # safetensors: u64 header size, JSON header
        record = json.loads(json.loads(raw[8:8 + header_len])["__metadata__"]["record"])
    except Exception as err:  # noqa: BLE001 - any unreadable file is one message
        raise DataError(f"{loc.child(FILE)} is not a readable theta_0 file ({type(err).__name__}: {err})") from None
    return theta, _entry(record, digest)


def stored_start(loc: Location, manifest: dict) -> Optional[torch.Tensor]:
    """The single theta_0 ``(D,)`` a complete dataset's manifest names (checked against its checksum);
    None for datasets whose tasks start elsewhere."""
    entry = manifest.get("theta0", {})
    if "sha256" not in entry:
        return None
    stored = read_stored(loc, entry["sha256"])
    if stored is None:
        raise DataError(f"{loc.child(FILE)} is missing: the dataset's manifest names it as the trajectories' start")
    return stored[0]


def theta0_of(cfg, family: TaskFamily, shared: Optional[torch.Tensor] = None) -> Theta0:
    """The :class:`Theta0` of ``cfg.trajectory`` around ``shared`` ``(D,)`` (a dataset's stored start, or
    a generator's); without one: for a single start computed here, else the base net's init under
    ``init_seed``."""
    t = cfg.trajectory
    if shared is None:
        shared = compute_start(cfg, family)[0] if t.theta0 in SINGLE else initial_theta(family, t.init_seed)
    return Theta0(t.theta0, shared)
