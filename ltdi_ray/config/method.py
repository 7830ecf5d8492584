"""Config schemas of the method: diffusion, generator model, meta-training and evaluation.

Defaults are the measured winners on sinusoid 5-shot (docs/results/method-choices.md); every open
choice of docs/design.md 2.3 stays a key so Tune can sweep it. The sets of names a key may take
are the registries' own (diffusion variants, schedules, presets, evaluated methods).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional

from ltdi_ray.config.checks import check
from ltdi_ray.diffusion import PARAMETERIZATIONS, SAMPLERS, SCHEDULES, SEGMENT_DRAWS, VARIANTS, WEIGHTINGS
from ltdi_ray.generator.denoisers import PRESETS
from ltdi_ray.meta.trainer import LR_SCHEDULES, META_RULES


def _one_of(value, names, key: str) -> None:
    check(value in names, key, f"must be one of {', '.join(names)}, got {value!r}")


@dataclass
class DiffusionConfig:
    """The diffusion process over normalised weights (docs/design.md 2.3)."""

    # local_consistency | bridge | hypernet (no diffusion: one call theta_0 -> theta_M); null = the task
    # family's default, chosen on validation tasks (docs/results/protocol.md), else bridge
    variant: Optional[str] = None
    segments: Optional[int] = None  # k; 1 = one segment to the final weights; null = 1 for hypernet, else 3
    schedule: str = "linear"
    steps: int = 20  # T
    parameterization: str = "x0"  # local_consistency only: eps | x0 | v
    weighting: str = "x0"  # local_consistency only: eps | mean | x0
    clip: Optional[float] = None  # local_consistency only: clip x0_hat while sampling
    # bridge only: s, in normalised-weight units; null = the task family's measured default (0 for Omniglot
    # heads started at their ProtoNet head), else 0.5
    bridge_noise: Optional[float] = None
    bridge_residual: bool = True  # bridge only: the network predicts the step to the segment end
    bridge_start_noise: Optional[float] = None  # bridge only: training noise on each segment's start; null as bridge_noise
    segment_draw: str = "all"  # bridge: all (every segment of every task per loss) | one (a random one per draw)
    sample_start_noise: float = 0.25  # bridge, num_samples > 1: spread of the candidates' starts around theta_0
    sampler: str = "ddim"  # ddpm | ddim
    sample_steps: Optional[int] = 1  # ddim: steps actually taken (bridge: per segment end at least); None = all T

    def __post_init__(self) -> None:
        # null variant and segments are checked again once the root config has filled them
        if self.variant is not None:
            _one_of(self.variant, VARIANTS, "diffusion.variant")
        _one_of(self.schedule, SCHEDULES, "diffusion.schedule")
        check(2 <= self.steps <= 1000, "diffusion.steps", f"must be in [2, 1000], got {self.steps}")
        check(self.segments is None or 1 <= self.segments <= self.steps, "diffusion.segments",
              f"must be in [1, diffusion.steps={self.steps}], got {self.segments}")
        check(self.variant != "hypernet" or self.segments in (None, 1), "diffusion.segments",
              f"must be 1 for diffusion.variant=hypernet (one call to theta_M; diffusion.variant=bridge chains k "
              f"segments), got {self.segments}")
        _one_of(self.parameterization, PARAMETERIZATIONS, "diffusion.parameterization")
        _one_of(self.weighting, WEIGHTINGS, "diffusion.weighting")
        check(self.clip is None or self.clip > 0, "diffusion.clip", f"must be > 0 or null, got {self.clip}")
        for key in ("bridge_noise", "bridge_start_noise"):
            value = getattr(self, key)
            check(value is None or value >= 0, f"diffusion.{key}", f"must be >= 0 or null, got {value}")
        check(self.sample_start_noise >= 0, "diffusion.sample_start_noise", f"must be >= 0, got {self.sample_start_noise}")
        _one_of(self.segment_draw, SEGMENT_DRAWS, "diffusion.segment_draw")
        _one_of(self.sampler, SAMPLERS, "diffusion.sampler")
        check(self.sample_steps is None or 1 <= self.sample_steps <= self.steps, "diffusion.sample_steps",
              f"must be in [1, diffusion.steps={self.steps}] or null, got {self.sample_steps}")


@dataclass
class ModelConfig:
    """Generator networks: a denoiser preset and the task encoder's width."""

    preset: str = "small"  # tiny | small | base (ltdi_ray.generator.denoisers.PRESETS)
    encoder_width: int = 128
    encoder_fourier: int = 32  # regression: random Fourier features of x in the set encoder (0 = raw x, y only)
    encoder_fourier_scale: float = 0.5  # their frequencies' standard deviation, in units of 1 / x
    # regression: lambda of a closed-form ridge fit of y on those features, an input of the encoder
    # (0 = off; null = the task family's measured default: 1e-4 for regression with Fourier features)
    encoder_ridge: Optional[float] = None

    def __post_init__(self) -> None:
        _one_of(self.preset, PRESETS, "model.preset")
        check(self.encoder_width >= 8, "model.encoder_width", f"must be >= 8, got {self.encoder_width}")
        check(self.encoder_fourier >= 0, "model.encoder_fourier", f"must be >= 0, got {self.encoder_fourier}")
        check(self.encoder_fourier_scale > 0, "model.encoder_fourier_scale",
              f"must be > 0, got {self.encoder_fourier_scale}")
        check(self.encoder_ridge is None or self.encoder_ridge >= 0, "model.encoder_ridge",
              f"must be >= 0 or null, got {self.encoder_ridge}")


@dataclass
class TrainConfig:
    """Meta-training of the generator (docs/design.md 2.5) on Ray Train."""

    meta: str = "none"  # none (single level) | reptile: see docs/results/method-choices.md for why none is the CPU default
    epochs: int = 10  # a metric report + checkpoint per epoch
    steps_per_epoch: int = 200  # outer steps per epoch
    meta_batch: int = 64  # tasks per outer step (global, whatever the worker count)
    draws: int = 4  # noise draws (t, eps) per task and segment in each loss
    inner_steps: int = 3  # reptile: K SGD steps per task
    inner_lr: float = 0.005  # reptile inner SGD learning rate
    reptile_chunk: Optional[int] = None  # reptile: tasks adapted at once; None: 16 on CPU, all on a GPU (measured)
    lr: float = 1e-3  # outer Adam learning rate
    # cosine (to 0 over epochs x steps_per_epoch outer steps) | constant; cosine measured better once
    # trajectories start at the Reptile-learned theta_0 (docs/results/method-choices.md)
    lr_schedule: str = "cosine"
    resample_support: bool = True  # condition on a fresh K-subset of the task's pool every step
    # weight of the function-space term (meta/function_loss.py); 0 = weight space only; None = the
    # task family's measured default (schema.loss_term_weight: 0.1 for sinusoid, else 0)
    function_loss: Optional[float] = None
    function_points: int = 25  # pool points the function-space term evaluates (evenly spread); 0 = all
    # weight of the chain's own task loss (meta/chain_loss.py: the DDIM chain from theta_0, differentiably, scored on
    # the pool's labels); 0 = off; None = the task family's measured default (0.3 for Omniglot heads, else 0)
    chain_loss: Optional[float] = None
    val_tasks: int = 100  # validation tasks generated at every epoch end
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 2.0  # also the torch threads of each worker
    worker_resources: Dict[str, float] = field(default_factory=dict)  # custom resources per worker, e.g. {node_a: 1}
    max_failures: int = 1  # worker-group restarts from the last checkpoint before the run fails
    seed: int = 0

    def __post_init__(self) -> None:
        _one_of(self.meta, META_RULES, "train.meta")
        _one_of(self.lr_schedule, LR_SCHEDULES, "train.lr_schedule")
        check(self.function_loss is None or self.function_loss >= 0, "train.function_loss",
              f"must be >= 0 or null, got {self.function_loss}")
        check(self.function_points >= 0, "train.function_points", f"must be >= 0, got {self.function_points}")
        check(not self.function_loss or self.meta == "none", "train.function_loss",
              f"applies to single-level training (train.meta=none), not train.meta={self.meta}")
        check(self.chain_loss is None or self.chain_loss >= 0, "train.chain_loss",
              f"must be >= 0 or null, got {self.chain_loss}")
        check(not self.chain_loss or self.meta == "none", "train.chain_loss",
              f"applies to single-level training (train.meta=none), not train.meta={self.meta}")
        for key in ("epochs", "steps_per_epoch", "meta_batch", "draws", "inner_steps", "num_workers"):
            check(getattr(self, key) >= 1, f"train.{key}", f"must be >= 1, got {getattr(self, key)}")
        for key in ("inner_lr", "lr"):
            value = getattr(self, key)
            check(value > 0 and math.isfinite(value), f"train.{key}", f"must be a positive number, got {value}")
        check(self.reptile_chunk is None or self.reptile_chunk >= 1, "train.reptile_chunk",
              f"must be >= 1 or null, got {self.reptile_chunk}")
        check(self.val_tasks >= 1, "train.val_tasks", f"must be >= 1, got {self.val_tasks}")
        check(self.max_failures >= 0, "train.max_failures", f"must be >= 0, got {self.max_failures}")
        check(self.cpus_per_worker > 0, "train.cpus_per_worker", f"must be > 0, got {self.cpus_per_worker}")
        for key, value in self.worker_resources.items():
            check(key not in ("CPU", "GPU") and float(value) > 0, f"train.worker_resources.{key}",
                  "must be a custom resource (CPU and GPU have their own keys) with an amount > 0")


@dataclass
class MetaInitConfig:
    """Meta-training of one initialisation of the base network (MAML, first-order MAML or Reptile: a
    plain-SGD inner loop, Adam outer loop). ``SECTION``: where the node sits, for error messages."""

    SECTION: ClassVar[str] = "meta_init"
    meta_steps: int = 20000  # outer iterations
    meta_batch: int = 25  # tasks per outer step (MAML paper: 25)
    inner_steps: int = 1  # SGD steps per task inside meta-training
    inner_lr: float = 0.01  # MAML paper: 0.01
    outer_lr: float = 1e-3  # Adam
    seed: int = 0  # the task and point draws

    def __post_init__(self) -> None:
        for key in ("meta_steps", "meta_batch", "inner_steps"):
            check(getattr(self, key) >= 1, f"{self.SECTION}.{key}", f"must be >= 1, got {getattr(self, key)}")
        for key in ("inner_lr", "outer_lr"):
            value = getattr(self, key)
            check(value > 0 and math.isfinite(value), f"{self.SECTION}.{key}", f"must be a positive number, got {value}")


@dataclass
class BaselineConfig(MetaInitConfig):
    """The gradient-based meta-learned inits (MAML, first-order MAML, Reptile) evaluate compares against."""

    SECTION: ClassVar[str] = "evaluate.baseline"
    inner_steps: int = 1  # maml / fomaml: SGD steps inside meta-training (MAML paper: 1; 5 diverged here)
    reptile_inner_steps: int = 5  # reptile: SGD steps per task on support + query
    cpus: float = 1.0  # per baseline: each meta-trains as its own Ray task, side by side (also its torch threads)
    # keep each meta-trained baseline under <storage.uri>/baselines/ and reuse it when its inputs (dataset,
    # task, these settings, start, package version) agree: evaluating again skips minutes of meta-training
    reuse: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.reptile_inner_steps >= 1, "evaluate.baseline.reptile_inner_steps",
              f"must be >= 1, got {self.reptile_inner_steps}")
        check(self.cpus > 0, "evaluate.baseline.cpus", f"must be > 0, got {self.cpus}")


def _all_methods() -> List[str]:
    from ltdi_ray.evaluation.methods import METHODS  # the registry imports the whole model stack

    return list(METHODS)


def _default_methods() -> List[str]:
    from ltdi_ray.evaluation.methods import METHODS

    return [name for name, m in METHODS.items() if m.default]


def _all_diagnostics() -> List[str]:
    from ltdi_ray.evaluation.diagnostics import DIAGNOSTICS

    return list(DIAGNOSTICS)


@dataclass
class EvaluateConfig:
    """The comparison table on unseen tasks (docs/design.md 2.6)."""

    num_tasks: int = 600
    # val: development (every choice, probe and sweep) | test: the final table; the generator's own training
    # split (collect.split) is refused
    split: str = "test"
    # base seed of the scored episodes, independent of collect.seed: tasks 0..num_tasks-1 of (split, seed).
    # Every choice made before 2026-12-02 used test tasks of seed 0, so the untouched test draw is seed 1
    # (docs/results/protocol.md)
    seed: int = 1
    # test-time changes of the generator's task keys that the family allows (its ``eval_keys``; sinusoid:
    # pool=random puts supports and queries at continuous x): +evaluate.task.pool=random on the command line
    task: Dict[str, Any] = field(default_factory=dict)
    # names in ltdi_ray/evaluation/methods.py; default: those that need no extra generator training
    methods: List[str] = field(default_factory=_default_methods)
    diagnostics: List[str] = field(default_factory=list)  # names in ltdi_ray/evaluation/diagnostics.py
    adapt_steps: int = 10  # SGD steps on the support for maml / fomaml / reptile / ltdi_finetune (finetune_short: Adam)
    finetune_steps: Optional[int] = None  # finetune: steps of the collection optimiser on the support; null = trajectory.steps
    finetune_short_lr: Optional[float] = None  # finetune_short's step size (chosen on validation); null = trajectory.lr
    adapt_lr: float = 0.01  # maml / fomaml / reptile (the step size MAML meta-trains for)
    ltdi_adapt_lr: float = 0.001  # ltdi_finetune: trajectory end points are sharp; 0.01 diverged on some tasks
    start_adapt_lr: float = 0.1  # protonet_sgd: SGD from the family's support start (benchmarks choose it on val)
    num_samples: int = 1  # generated candidates per task; the lowest support loss is kept
    ways: Optional[int] = None  # classification: N of the test episodes (heads generalise to N other than trained)
    ablation_epochs: Optional[int] = None  # single_level / vanilla runs: train.epochs by default
    baseline: BaselineConfig = field(default_factory=BaselineConfig)

    def __post_init__(self) -> None:
        check(self.num_tasks >= 2, "evaluate.num_tasks", f"must be >= 2, got {self.num_tasks}")
        check(self.split in ("train", "val", "test"), "evaluate.split", f"must be train, val or test, got {self.split!r}")
        check(self.seed >= 0, "evaluate.seed", f"must be >= 0, got {self.seed}")
        known = _all_methods()
        unknown = sorted(set(self.methods) - set(known))
        check(not unknown and len(self.methods) > 0, "evaluate.methods", f"unknown {unknown}; choose from {known}")
        known = _all_diagnostics()
        unknown = sorted(set(self.diagnostics) - set(known))
        check(not unknown, "evaluate.diagnostics", f"unknown {unknown}; choose from {known}")
        check(self.adapt_steps >= 0, "evaluate.adapt_steps", f"must be >= 0, got {self.adapt_steps}")
        check(self.finetune_steps is None or self.finetune_steps >= 1, "evaluate.finetune_steps",
              f"must be >= 1 or null, got {self.finetune_steps}")
        check(self.adapt_lr > 0, "evaluate.adapt_lr", f"must be > 0, got {self.adapt_lr}")
        for key in ("ltdi_adapt_lr", "start_adapt_lr"):
            check(getattr(self, key) > 0, f"evaluate.{key}", f"must be > 0, got {getattr(self, key)}")
        check(self.finetune_short_lr is None or self.finetune_short_lr > 0, "evaluate.finetune_short_lr",
              f"must be > 0 or null, got {self.finetune_short_lr}")
        check(self.num_samples >= 1, "evaluate.num_samples", f"must be >= 1, got {self.num_samples}")
        check(self.ways is None or self.ways >= 2, "evaluate.ways", f"must be >= 2 or null, got {self.ways}")
        check(self.ablation_epochs is None or self.ablation_epochs >= 1, "evaluate.ablation_epochs",
              f"must be >= 1 or null, got {self.ablation_epochs}")


@dataclass
class PlotConfig:
    """The pictures of a trained run (``python -m ltdi_ray plot``)."""

    tasks: int = 6  # unseen test tasks whose true trajectories and generated chains are drawn

    def __post_init__(self) -> None:
        check(1 <= self.tasks <= 64, "plot.tasks", f"must be in [1, 64], got {self.tasks}")
