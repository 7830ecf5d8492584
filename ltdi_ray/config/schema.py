"""Structured config schemas (dataclasses) of the data side and the root config every stage composes.

YAML files in ``conf/`` only pick and override these. Each ``__post_init__`` checks the invariants
of its own node, so a bad value fails while the config is being composed, before any Ray work,
with a message that names the full key. The ``task`` node is the task family's own dataclass
(``ltdi_ray.tasks``); keys left null take the family's measured defaults here. Sizes derived from
data (parameter count D, checkpoint count C) are never stored: they come from the data artifact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, List, Optional

from omegaconf import MISSING, OmegaConf

from ltdi_ray.config.checks import absolute, check
from ltdi_ray.config.method import DiffusionConfig, EvaluateConfig, MetaInitConfig, ModelConfig, PlotConfig, TrainConfig
from ltdi_ray.config.sweep import SweepConfig
from ltdi_ray.diffusion import FROM_THETA0
from ltdi_ray.tasks import family_class
from ltdi_ray.trajectories.theta0 import MODES as THETA0_MODES

# the default run directory names the family by its short name, also for an import path
OmegaConf.register_new_resolver("family_name", lambda spec: family_class(spec).name, replace=True)


@dataclass
class TrajectoryConfig:
    """The inner optimiser whose trajectories become diffusion targets (docs/design.md 2.2), and where they start."""

    optimizer: str = "adam"  # adam | sgd
    lr: float = 0.01
    steps: int = 100  # M
    save_every: int = 10  # C = M / save_every + 1 checkpoints per task
    sam_rho: float = 0.0  # > 0 turns on sharpness-aware minimisation with this radius
    # shared (one draw of the base net's init) | reptile (one start meta-learned by Reptile on the training
    # tasks, `reptile_start` keys) | per_task (each task's own draw) | prototype (a start computed from each
    # support by the family, e.g. Omniglot heads' ProtoNet head); null = the family's measured default
    theta0: Optional[str] = None
    init_seed: int = 0  # seed of the shared theta_0

    def __post_init__(self) -> None:
        check(self.optimizer in ("adam", "sgd"), "trajectory.optimizer", f"must be adam or sgd, got {self.optimizer!r}")
        check(self.lr > 0 and math.isfinite(self.lr), "trajectory.lr", f"must be a positive number, got {self.lr}")
        check(self.steps >= 1, "trajectory.steps", f"must be >= 1, got {self.steps}")
        check(self.save_every >= 1 and self.steps % self.save_every == 0, "trajectory.save_every",
              f"must be >= 1 and divide trajectory.steps ({self.steps}), got {self.save_every}")
        check(self.sam_rho >= 0, "trajectory.sam_rho", f"must be >= 0, got {self.sam_rho}")
        check(self.theta0 in (None, *THETA0_MODES), "trajectory.theta0",
              f"must be one of {', '.join(THETA0_MODES)}, got {self.theta0!r}")

    @property
    def checkpoint_steps(self) -> List[int]:
        """The inner-loop step of each saved checkpoint: 0, save_every, ..., steps."""
        return list(range(0, self.steps + 1, self.save_every))

    @property
    def num_checkpoints(self) -> int:
        """C = steps / save_every + 1 (theta_0 included)."""
        return self.steps // self.save_every + 1


@dataclass
class ReptileStartConfig(MetaInitConfig):
    """``trajectory.theta0=reptile``: Reptile meta-training of the trajectories' shared start
    (docs/results/method-choices.md). The Reptile baseline's settings, kept apart from
    ``evaluate.baseline`` so that tuning the baselines does not change a dataset."""

    SECTION: ClassVar[str] = "reptile_start"
    inner_steps: int = 5  # SGD steps per task on its support + query points
    tasks: int = 10000  # training tasks (ids 0..tasks-1 of collect.split) it meta-trains on, fixed when first made

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.tasks >= 1, "reptile_start.tasks", f"must be >= 1, got {self.tasks}")


@dataclass
class CollectConfig:
    """How many tasks to collect and how to spread the work over Ray Data."""

    num_tasks: int = 10000
    split: str = "train"  # which task split the trajectories come from
    seed: int = 0  # base of every task's seed (with family, split and task index)
    batch_size: int = 256  # tasks per collector call (a Parquet file holds one or more calls' chunks)
    # working memory of one collector's inner loop: a call's tasks run in chunks sized to fit it (from the net's
    # activations and weights, measured on one task), so an actor's peak does not grow with batch_size
    chunk_mb: int = 1024
    num_actors: int = 0  # collector actors; 0 = one per cpus_per_actor of the cluster's CPUs
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0  # > 0 schedules collectors on GPUs and runs the inner loop there
    num_writers: int = 0  # Parquet writer actors; 0 = one per four collectors

    def __post_init__(self) -> None:
        check(self.num_tasks >= 1, "collect.num_tasks", f"must be >= 1, got {self.num_tasks}")
        check(self.split in ("train", "val", "test"), "collect.split", f"must be train, val or test, got {self.split!r}")
        check(self.batch_size >= 1, "collect.batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.chunk_mb >= 1, "collect.chunk_mb", f"must be >= 1 (MB), got {self.chunk_mb}")
        check(self.num_actors >= 0, "collect.num_actors", f"must be >= 0, got {self.num_actors}")
        check(self.cpus_per_actor > 0, "collect.cpus_per_actor", f"must be > 0, got {self.cpus_per_actor}")
        check(self.gpus_per_actor >= 0, "collect.gpus_per_actor", f"must be >= 0, got {self.gpus_per_actor}")
        check(self.num_writers >= 0, "collect.num_writers", f"must be >= 0, got {self.num_writers}")


@dataclass
class StorageConfig:
    """One URI root per run: a local path or s3://bucket/prefix."""

    uri: str = "./ltdi_runs/${family_name:${task.family}}"
    endpoint_url: Optional[str] = None  # S3-compatible endpoint (MinIO, Ceph, ...); None = AWS or AWS_ENDPOINT_URL
    # S3 only: a writer's lease not renewed for this long belongs to a dead owner on another host (storage/lease.py)
    lease_ttl_s: float = 120.0

    def __post_init__(self) -> None:
        check(bool(self.uri), "storage.uri", "must not be empty")
        scheme = self.uri.split("://", 1)[0] if "://" in self.uri else "file"
        check(scheme in ("file", "s3"), "storage.uri", f"scheme must be a local path, file:// or s3://, got {scheme}://")
        check(".." not in self.uri.split("/"), "storage.uri", f"must not contain '..' segments, got {self.uri!r}")
        self.uri = absolute(self.uri)
        check(self.lease_ttl_s >= 1, "storage.lease_ttl_s", f"must be at least 1 second, got {self.lease_ttl_s}")
        if self.endpoint_url is not None:
            check(self.endpoint_url.startswith(("http://", "https://")), "storage.endpoint_url",
                  f"must start with http:// or https://, got {self.endpoint_url!r}")


@dataclass
class RayConfig:
    """Where to run: an existing cluster (address or RAY_ADDRESS) or a fresh local one."""

    address: Optional[str] = None  # None: RAY_ADDRESS if set (ray job submit), else a new local instance
    num_cpus: Optional[int] = None  # logical CPUs of a new local instance; None = Ray's default
    # on a cluster that may grow, how long a stage waits for room for its workers (pipelines/placement.py)
    placement_timeout_s: float = 900.0

    def __post_init__(self) -> None:
        check(self.num_cpus is None or self.num_cpus >= 1, "ray.num_cpus", f"must be >= 1, got {self.num_cpus}")
        check(self.placement_timeout_s > 0, "ray.placement_timeout_s", f"must be > 0, got {self.placement_timeout_s}")


# keys that may be left null for the task family to fill, in the order they are filled (a family's default
# may depend on those before it), and their value where it says nothing (a function of the config so far)
FAMILY_DEFAULTS = {"trajectory.theta0": lambda cfg: "shared", "diffusion.variant": lambda cfg: "bridge",
                   "diffusion.segments": lambda cfg: 1 if cfg.diffusion.variant == "hypernet" else 3,
                   "diffusion.bridge_noise": lambda cfg: 0.5, "diffusion.bridge_start_noise": lambda cfg: 0.5,
                   "model.encoder_ridge": lambda cfg: 0.0}


@dataclass
class Config:
    """The root config every stage composes."""

    task: Any = MISSING  # the task family's Config dataclass (ltdi_ray.tasks)
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    reptile_start: ReptileStartConfig = field(default_factory=ReptileStartConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tune: SweepConfig = field(default_factory=SweepConfig)
    plot: PlotConfig = field(default_factory=PlotConfig)
    resume: bool = True  # train: continue the run of the same config from its latest checkpoint; false: a new run
    verbose: bool = False  # the console: Ray's per-report lines and known-harmless warnings too

    def __post_init__(self) -> None:
        family = family_class(self.task.family)
        for key, fallback in FAMILY_DEFAULTS.items():
            section, name = key.split(".")
            if getattr(getattr(self, section), name) is None:
                measured = family.defaults(self)
                setattr(getattr(self, section), name, measured[key] if key in measured else fallback(self))
        self.diffusion.__post_init__()  # its checks of the keys just filled
        family.check(self)
        d = self.diffusion
        starts = " or ".join(FROM_THETA0)
        check(not self.train.function_loss or d.variant in FROM_THETA0, "train.function_loss",
              f"needs diffusion.variant={starts} (its loss predicts end points), got {d.variant}")
        check(not self.train.chain_loss or (d.variant in FROM_THETA0 and d.sampler == "ddim"), "train.chain_loss",
              f"needs diffusion.variant={starts} and diffusion.sampler=ddim (it trains the deterministic chain the "
              f"generator samples with), got {d.variant} and {d.sampler}")
        check(not self.model.encoder_ridge or self.model.encoder_fourier > 0, "model.encoder_ridge",
              "needs model.encoder_fourier > 0 (the ridge fit is over the Fourier features)")


def loss_term_weight(cfg: Config, term: str) -> float:
    """``train.function_loss`` or ``train.chain_loss`` (``term``), or where it is null the task family's
    measured default where the term applies (single-level bridge training; the chain loss also needs
    the deterministic DDIM chain), else 0. Resolved where it is used, so configs derived from this one
    (ablations, sweep trials) get their own default."""
    value = getattr(cfg.train, term)
    if value is not None:
        return value
    d = cfg.diffusion
    usable = d.variant in FROM_THETA0 and cfg.train.meta == "none" and (term != "chain_loss" or d.sampler == "ddim")
    return family_class(cfg.task.family).defaults(cfg).get(f"train.{term}", 0.0) if usable else 0.0
