"""Structured config schemas (dataclasses) for every stage.

YAML files in ``conf/`` only pick and override these. Each ``__post_init__`` checks the
invariants of its own node, so a bad value fails while the config is being composed, before
any Ray work, with a message that names the full key. Sizes derived from data (parameter
count D, checkpoint count C) are never stored here: they come from the data artifact.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import MISSING

from ltdi_ray.config.checks import check
from ltdi_ray.config.method import DiffusionConfig, EvaluateConfig, ModelConfig, PlotConfig, TrainConfig
from ltdi_ray.config.sweep import SweepConfig


def _absolute(uri: str) -> str:
    """Local paths become absolute when composed: Ray workers and Tune trials change directory."""
    if uri.startswith("s3://"):
        return uri
    return os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))


def _check_range(pair: List[float], key: str) -> None:
    check(len(pair) == 2 and pair[0] <= pair[1], key, f"must be [low, high] with low <= high, got {list(pair)}")


@dataclass
class SinusoidTaskConfig:
    """Sinusoid regression, MAML protocol: y = A sin(x - p)."""

    family: str = "sinusoid"
    shots: int = 5  # K: support size, the generator's condition
    pool_size: int = 100  # points the inner optimiser trains on (support is a subset)
    pool: str = "grid"  # grid: the same evenly spaced x for every task (targets depend on the task alone); random: x ~ U(x_range)
    query_size: int = 100  # held-out points, scoring only
    amplitude: List[float] = field(default_factory=lambda: [0.1, 5.0])
    phase: List[float] = field(default_factory=lambda: [0.0, math.pi])
    x_range: List[float] = field(default_factory=lambda: [-5.0, 5.0])
    hidden: List[int] = field(default_factory=lambda: [40, 40])  # base MLP 1-40-40-1

    def __post_init__(self) -> None:
        check(self.family == "sinusoid", "task.family", f"schema is sinusoid, got {self.family!r}")
        check(self.shots >= 1, "task.shots", f"must be >= 1, got {self.shots}")
        check(self.pool_size >= self.shots, "task.pool_size", f"must be >= task.shots ({self.shots}), got {self.pool_size}")
        check(self.query_size >= 1, "task.query_size", f"must be >= 1, got {self.query_size}")
        check(self.pool in ("random", "grid"), "task.pool", f"must be random or grid, got {self.pool!r}")
        for key in ("amplitude", "phase", "x_range"):
            _check_range(getattr(self, key), f"task.{key}")
        check(len(self.hidden) >= 1 and min(self.hidden) >= 1, "task.hidden", f"must be positive widths, got {list(self.hidden)}")


@dataclass
class OmniglotTaskConfig:
    """N-way K-shot Omniglot episodes from the standard folder layout or its zip archives."""

    family: str = "omniglot"
    root: str = MISSING  # directory, zip file or directory of zips; local path or s3:// URI
    ways: int = 5
    shots: int = 1
    query_per_class: int = 5  # drawings per class held out for scoring; the rest form the pool
    image_size: int = 28
    split_seed: int = 0
    split_fractions: List[float] = field(default_factory=lambda: [0.62, 0.132, 0.248])  # 242 chars -> 150/32/60
    rotate_train: bool = True  # rotations by k*90 degrees as new classes, training split only
    channels: int = 32  # conv net width
    depth: int = 4  # conv blocks: 28 -> 14 -> 7 -> 3 -> 1
    generate: str = "full"  # full: the whole conv net is theta; head: only the classifier on a frozen backbone
    # head mode's frozen feature extractor: safetensors ConvNet weights (local or s3://); `random` = a fixed seeded
    # init (untrained features); unset = trained on the training characters into <storage.uri>/backbone by the stages
    backbone: Optional[str] = None
    backbone_seed: int = 0  # the seed of the extractor's initialisation

    def __post_init__(self) -> None:
        check(self.family == "omniglot", "task.family", f"schema is omniglot, got {self.family!r}")
        self.root = _absolute(self.root)
        check(self.ways >= 2, "task.ways", f"must be >= 2, got {self.ways}")
        check(self.shots >= 1, "task.shots", f"must be >= 1, got {self.shots}")
        check(self.query_per_class >= 1, "task.query_per_class", f"must be >= 1, got {self.query_per_class}")
        check(8 <= self.image_size <= 105, "task.image_size", f"must be in [8, 105], got {self.image_size}")
        fr = list(self.split_fractions)
        check(len(fr) == 3 and min(fr) > 0 and abs(sum(fr) - 1) < 1e-6, "task.split_fractions",
              f"must be three positive fractions summing to 1, got {fr}")
        check(self.channels >= 1 and self.depth >= 1, "task.channels", "channels and depth must be >= 1")
        check(self.generate in ("full", "head"), "task.generate", f"must be full or head, got {self.generate!r}")
        check(self.backbone is None or self.generate == "head", "task.backbone", "only applies to task.generate=head")
        if self.backbone not in (None, "random"):
            self.backbone = _absolute(self.backbone)


@dataclass
class TrajectoryConfig:
    """The inner optimiser whose trajectories become diffusion targets (DESIGN 2.2)."""

    optimizer: str = "adam"  # adam | sgd
    lr: float = 0.01
    steps: int = 100  # M
    save_every: int = 10  # C = M / save_every + 1 checkpoints per task
    sam_rho: float = 0.0  # > 0 turns on sharpness-aware minimisation with this radius
    # shared (one draw of the base net's init) | per_task | prototype (Omniglot heads: each task starts at
    # its ProtoNet head) | reptile (one start meta-learned by Reptile on the training tasks, `start` keys);
    # null = the measured default (Config.resolve_defaults: prototype for heads, reptile for sinusoid, else shared)
    theta0: Optional[str] = None
    init_seed: int = 0  # seed of the shared theta_0

    def __post_init__(self) -> None:
        check(self.optimizer in ("adam", "sgd"), "trajectory.optimizer", f"must be adam or sgd, got {self.optimizer!r}")
        check(self.lr > 0 and math.isfinite(self.lr), "trajectory.lr", f"must be a positive number, got {self.lr}")
        check(self.steps >= 1, "trajectory.steps", f"must be >= 1, got {self.steps}")
        check(self.save_every >= 1 and self.steps % self.save_every == 0, "trajectory.save_every",
              f"must be >= 1 and divide trajectory.steps ({self.steps}), got {self.save_every}")
        check(self.sam_rho >= 0, "trajectory.sam_rho", f"must be >= 0, got {self.sam_rho}")
        check(self.theta0 in (None, "shared", "per_task", "prototype", "reptile"), "trajectory.theta0",
              f"must be shared, per_task, prototype or reptile, got {self.theta0!r}")


@dataclass
class StartConfig:
    """Reptile meta-training of the trajectories' shared start when ``trajectory.theta0=reptile``
    (DESIGN 2.2's theta_0; README "Method choices"). The defaults are the Reptile baseline's
    (``evaluate.baseline``), kept apart so that tuning the baselines does not change a dataset."""

    tasks: int = 10000  # training tasks (ids 0..tasks-1 of collect.split) it meta-trains on, fixed when first made
    meta_steps: int = 20000  # outer Adam steps
    meta_batch: int = 25  # tasks per outer step
    inner_steps: int = 5  # SGD steps per task on its support + query points
    inner_lr: float = 0.01
    outer_lr: float = 1e-3
    seed: int = 0  # the task and point draws

    def __post_init__(self) -> None:
        for key in ("tasks", "meta_steps", "meta_batch", "inner_steps"):
            check(getattr(self, key) >= 1, f"start.{key}", f"must be >= 1, got {getattr(self, key)}")
        for key in ("inner_lr", "outer_lr"):
            value = getattr(self, key)
            check(value > 0 and math.isfinite(value), f"start.{key}", f"must be a positive number, got {value}")


@dataclass
class BackboneConfig:
    """Pre-training of ``head`` mode's feature extractor when ``task.backbone`` is unset (DESIGN 2.4)."""

    epochs: int = 20  # Omniglot-242, 2-core CPU: 80 s; 5-way 1-shot ProtoNet val accuracy 0.87 at 10, 0.90 at 20
    lr: float = 1e-3
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "backbone.epochs", f"must be >= 1, got {self.epochs}")
        check(self.lr > 0, "backbone.lr", f"must be > 0, got {self.lr}")
        check(self.batch_size >= 1, "backbone.batch_size", f"must be >= 1, got {self.batch_size}")


@dataclass
class CollectConfig:
    """How many tasks to collect and how to spread the work over Ray Data."""

    num_tasks: int = 10000
    split: str = "train"  # which task split the trajectories come from
    seed: int = 0  # base of every task's seed (with family, split and task index)
    batch_size: int = 256  # tasks per batched inner-loop call and per Parquet file
    num_actors: int = 0  # collector actors; 0 = one per cpus_per_actor of the cluster's CPUs
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0  # > 0 schedules collectors on GPUs and runs the inner loop there
    num_writers: int = 0  # Parquet writer actors; 0 = one per four collectors

    def __post_init__(self) -> None:
        check(self.num_tasks >= 1, "collect.num_tasks", f"must be >= 1, got {self.num_tasks}")
        check(self.split in ("train", "val", "test"), "collect.split", f"must be train, val or test, got {self.split!r}")
        check(self.batch_size >= 1, "collect.batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.num_actors >= 0, "collect.num_actors", f"must be >= 0, got {self.num_actors}")
        check(self.cpus_per_actor > 0, "collect.cpus_per_actor", f"must be > 0, got {self.cpus_per_actor}")
        check(self.gpus_per_actor >= 0, "collect.gpus_per_actor", f"must be >= 0, got {self.gpus_per_actor}")
        check(self.num_writers >= 0, "collect.num_writers", f"must be >= 0, got {self.num_writers}")


@dataclass
class StorageConfig:
    """One URI root per run: a local path or s3://bucket/prefix."""

    uri: str = "./ltdi_runs/${task.family}"
    endpoint_url: Optional[str] = None  # S3-compatible endpoint (MinIO, Ceph, ...); None = AWS or AWS_ENDPOINT_URL

    def __post_init__(self) -> None:
        check(bool(self.uri), "storage.uri", "must not be empty")
        scheme = self.uri.split("://", 1)[0] if "://" in self.uri else "file"
        check(scheme in ("file", "s3"), "storage.uri", f"scheme must be a local path, file:// or s3://, got {scheme}://")
        check(".." not in self.uri.split("/"), "storage.uri", f"must not contain '..' segments, got {self.uri!r}")
        self.uri = _absolute(self.uri)
        if self.endpoint_url is not None:
            check(self.endpoint_url.startswith(("http://", "https://")), "storage.endpoint_url",
                  f"must start with http:// or https://, got {self.endpoint_url!r}")


@dataclass
class RayConfig:
    """Where to run: an existing cluster (address or RAY_ADDRESS) or a fresh local one."""

    address: Optional[str] = None  # None: RAY_ADDRESS if set (ray job submit), else a new local instance
    num_cpus: Optional[int] = None  # logical CPUs of a new local instance; None = Ray's default

    def __post_init__(self) -> None:
        check(self.num_cpus is None or self.num_cpus >= 1, "ray.num_cpus", f"must be >= 1, got {self.num_cpus}")


@dataclass
class Config:
    """The root config every stage composes."""

    task: Any = MISSING
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    start: StartConfig = field(default_factory=StartConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tune: SweepConfig = field(default_factory=SweepConfig)
    plot: PlotConfig = field(default_factory=PlotConfig)
    resume: bool = True  # train: continue the run of the same config from its latest checkpoint; false: a new run

    def __post_init__(self) -> None:
        self.resolve_defaults()
        check(not self.train.function_loss or self.diffusion.variant == "bridge", "train.function_loss",
              f"needs diffusion.variant=bridge (its loss predicts segment ends), got {self.diffusion.variant}")
        d = self.diffusion
        check(not self.train.chain_loss or (d.variant == "bridge" and d.sampler == "ddim"), "train.chain_loss",
              "needs diffusion.variant=bridge and diffusion.sampler=ddim (it trains the deterministic chain the "
              f"generator samples with), got {d.variant} and {d.sampler}")
        check(not self.model.encoder_ridge or self.model.encoder_fourier > 0, "model.encoder_ridge",
              "needs model.encoder_fourier > 0 (the ridge fit is over the Fourier features)")
        check(self.trajectory.theta0 != "prototype" or getattr(self.task, "generate", None) == "head",
              "trajectory.theta0", "prototype needs task=omniglot task.generate=head (a head on fixed features)")
        if isinstance(self.task, OmniglotTaskConfig):
            check(self.task.shots <= 20 - self.task.query_per_class, "task.shots",
                  f"Omniglot has 20 drawings per character: shots ({self.task.shots}) + "
                  f"query_per_class ({self.task.query_per_class}) must be <= 20")

    def resolve_defaults(self) -> None:
        """Fill the keys left null with the defaults measured for this task (README "Omniglot-242"):
        Omniglot heads start at each episode's ProtoNet head and, from there, bridge without noise
        (0.881 -> 0.906 on 1-shot); sinusoid trajectories start at a Reptile-learned theta_0 (10 shots:
        0.232 -> 0.018); everything else at one shared draw of the base net's init; all but the heads
        with s = 0.5 noise, which keeps sinusoid chains on the data (README "Method choices"). Regression encoders with
        Fourier features also fit the support by ridge regression, lambda = 1e-4 (same section)."""
        head = getattr(self.task, "generate", None) == "head"
        if self.trajectory.theta0 is None:
            sinusoid = isinstance(self.task, SinusoidTaskConfig)
            self.trajectory.theta0 = "prototype" if head else "reptile" if sinusoid else "shared"
        noise = 0.0 if head and self.trajectory.theta0 == "prototype" else 0.5
        for key in ("bridge_noise", "bridge_start_noise"):
            if getattr(self.diffusion, key) is None:
                setattr(self.diffusion, key, noise)
        if self.model.encoder_ridge is None:
            self.model.encoder_ridge = 1e-4 if self.model.encoder_fourier > 0 else 0.0


TASK_SCHEMAS = {"sinusoid": SinusoidTaskConfig, "omniglot": OmniglotTaskConfig}


def chain_loss_weight(cfg: Config) -> float:
    """``train.chain_loss``, or where it is null the measured default: 0.3 for Omniglot heads (bridge,
    single level, DDIM: README "Omniglot-242"), else 0 (not measured). Resolved where it is used, like
    :func:`function_loss_weight`."""
    if cfg.train.chain_loss is not None:
        return cfg.train.chain_loss
    usable = cfg.diffusion.variant == "bridge" and cfg.diffusion.sampler == "ddim" and cfg.train.meta == "none"
    return 0.3 if usable and getattr(cfg.task, "generate", None) == "head" else 0.0


def function_loss_weight(cfg: Config) -> float:
    """``train.function_loss``, or where it is null the measured default: 0.1 for sinusoid with the
    bridge and single-level training (README "Method choices"), else 0. Resolved where it is used, so
    configs derived from this one (ablations, sweep trials) get their own default."""
    if cfg.train.function_loss is not None:
        return cfg.train.function_loss
    measured = isinstance(cfg.task, SinusoidTaskConfig) and cfg.diffusion.variant == "bridge"
    return 0.1 if measured and cfg.train.meta == "none" else 0.0
