"""The task-family contract (docs/extending.md) and deterministic per-task seeds.

A family owns everything about its tasks: its config node (``task.*``), how episodes are drawn,
the base network, the loss and metric, how a support set becomes the generator's condition,
where chains may start and the defaults it measured. Nothing outside ``ltdi_ray/tasks`` asks which
family it is talking to.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ltdi_ray.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")

# name -> (shape, numpy dtype) of one fixed-shape episode array
FieldSpec = Dict[str, Tuple[Tuple[int, ...], str]]


def task_seed(family: str, split: str, index: int, base_seed: int = 0) -> int:
    """A 63-bit seed from (family, split, task index, base seed): any task can be regenerated alone."""
    digest = hashlib.blake2b(f"{family}/{split}/{int(index)}/{int(base_seed)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def counter_uniform(seeds: np.ndarray, n: int, stream: int) -> np.ndarray:
    """Uniform [0, 1) draws ``(B, n)``: SplitMix64 of (task seed, stream, counter).

    A counter-based generator vectorises over tasks, so sampling costs ~1 us per task instead
    of ~50 us for a seeded ``numpy.random.Generator`` per task, while every task stays
    reproducible alone. ``stream`` separates the draws of different quantities.
    """
    with np.errstate(over="ignore"):
        ctr = np.arange(n, dtype=np.uint64) + np.uint64(stream) * np.uint64(1 << 32) + np.uint64(1)
        z = seeds.astype(np.uint64)[:, None] + ctr[None, :] * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


class TaskFamily(ABC):
    """A source of few-shot episodes plus everything needed to learn on them.

    Every episode has a train ``pool`` (what the inner optimiser trains on), a K-shot ``support``
    drawn from the pool (``support_idx``, the generator's condition) and a disjoint ``query`` set
    (scoring only). All arrays have fixed shapes so episodes batch and store as fixed-size Arrow
    lists. Subclass :class:`RegressionFamily` or :class:`ClassificationFamily`, which supply the
    loss, metric, targets and condition encoder of their kind.
    """

    name: ClassVar[str]  # short name: task seeds, manifests, the default run directory
    Config: ClassVar[type]  # dataclass of the ``task`` node; it has ``family: str`` and ``shots: int``
    metric_name: ClassVar[str]  # what :meth:`metric` measures, as tables name it
    higher_is_better: ClassVar[bool]
    eval_keys: ClassVar[Tuple[str, ...]] = ()  # task keys test episodes may change (``evaluate.task``)

    def __init__(self, cfg, endpoint_url: Optional[str] = None):
        self.cfg, self.endpoint_url = cfg, endpoint_url

    # -- episodes -------------------------------------------------------------------------

    @abstractmethod
    def fields(self) -> FieldSpec:
        """Shapes and dtypes of the arrays :meth:`sample` returns (must include pool_x, pool_y,
        support_idx, query_x, query_y)."""

    @abstractmethod
    def sample(self, split: str, index: int, base_seed: int = 0) -> Dict[str, np.ndarray]:
        """Episode ``index`` of ``split``: a dict of arrays shaped as :meth:`fields` says."""

    def sample_many(self, split: str, indices: Sequence[int], base_seed: int = 0) -> Dict[str, np.ndarray]:
        """Episodes for ``indices`` stacked along a new leading axis ``(B, ...)``."""
        episodes = [self.sample(split, int(i), base_seed) for i in indices]
        return {k: np.stack([e[k] for e in episodes]) for k in self.fields()}

    @property
    def pool_classes(self) -> int:
        """Classification: the pool is this many class-major blocks of equal size (1: no classes)."""
        return 1

    @property
    def shots(self) -> int:
        """K: support examples per class."""
        return self.fields()["support_idx"][0][0] // self.pool_classes

    # -- the base network and what it is judged by ----------------------------------------

    @abstractmethod
    def build_net(self, ways: Optional[int] = None) -> nn.Module:
        """A fresh base network (its trainable parameters give the ParamSpec and the theta_0 init);
        ``ways``: for families whose output size can change at generation time (:meth:`with_ways`)."""

    @abstractmethod
    def loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of predictions ``(P, ...)`` against targets ``(P, ...)``: a scalar, written so
        that ``torch.func.vmap`` batches it (the inner loop vmaps it over tasks)."""

    @abstractmethod
    def metric(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The reported metric of predictions against targets: a scalar (see ``higher_is_better``)."""

    @abstractmethod
    def decode(self, x: np.ndarray) -> torch.Tensor:
        """Stored inputs ``(B, P, ...)`` -> float inputs as users pass them."""

    @abstractmethod
    def targets_to_torch(self, y: np.ndarray) -> torch.Tensor:
        """Stored targets -> the tensors :meth:`loss` takes."""

    def input_shape(self) -> Tuple[int, ...]:
        """The shape of one input as users pass it (what :meth:`decode` makes of one stored example)."""
        return tuple(self.fields()["pool_x"][0][1:])

    def net_input(self, x: torch.Tensor) -> torch.Tensor:
        """Float inputs as users pass them ``(..., *x_shape)`` -> what :meth:`build_net`'s network takes."""
        return x

    def to_torch(self, x: np.ndarray) -> torch.Tensor:
        """Stored inputs ``(B, P, ...)`` -> what :meth:`build_net`'s network takes."""
        return self.net_input(self.decode(x))

    def deployable(self, net: nn.Module) -> nn.Module:
        """A network from :meth:`build_net` as a module on the users' inputs (the network itself by default)."""
        return net

    # -- the generator --------------------------------------------------------------------

    @abstractmethod
    def build_encoder(self, model_cfg, cond_dim: int, dim: int) -> nn.Module:
        """The task encoder: support ``(sx (B, K, ...) network inputs, sy (B, K, ...))`` -> the condition."""

    def build_denoiser(self, dim: int, steps: int, preset) -> nn.Module:
        """The denoiser over D-dim weights: ``(x_t (N, D), t (N,), condition) -> (N, D)``."""
        from ltdi_ray.generator.denoisers import ResMLPDenoiser

        return ResMLPDenoiser(dim, steps, preset)

    def normalizer(self, mean: torch.Tensor, std: torch.Tensor):
        """The weight normaliser from a dataset's per-coordinate statistics ``(D,)``."""
        from ltdi_ray.generator.normalizer import WeightNormalizer

        return WeightNormalizer(mean, std)

    @classmethod
    def has_support_start(cls, task_cfg) -> bool:
        """Whether :meth:`support_start` is defined for this task config."""
        return False

    def support_start(self, sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
        """``trajectory.theta0=prototype``: weights ``(B, D)`` computed from each support (network inputs),
        also scored by itself as evaluate's ``protonet`` method."""
        raise ConfigError(f"trajectory.theta0=prototype: the {self.name} family has no start computed from a support")

    @classmethod
    def has_in_context(cls, task_cfg) -> bool:
        """Whether :meth:`in_context` is defined for this task config."""
        return False

    def in_context(self, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> torch.Tensor:
        """Predictions ``(B, Q, ...)`` on queries ``qx`` from a model that reads the support ``(sx, sy)`` in its
        input instead of changing weights (a language model's prompt: evaluate's ``in_context`` method);
        inputs as users pass them."""
        raise ConfigError(f"the {self.name} family has no in-context predictor")

    def support_ways(self, sy: torch.Tensor) -> Optional[int]:
        """The number of classes a batch of supports ``sy (B, K)`` asks for; None where it cannot vary."""
        return None

    def with_ways(self, ways: Optional[int]) -> "TaskFamily":
        """This family for ``ways``-way episodes (heads generalise to N other than trained)."""
        if ways is not None and ways != self.pool_classes:
            raise DataError(f"the {self.name} family makes networks of one output size; got {ways}-way supports")
        return self

    def for_evaluation(self, changes: Dict[str, Any]) -> "TaskFamily":
        """This family with the test-time changes ``evaluate.task`` asks for (only :attr:`eval_keys`: keys that
        change where episodes lie, never what the generator was built for)."""
        if not changes:
            return self
        bad = sorted(set(changes) - set(self.eval_keys))
        if bad:
            allowed = ", ".join(self.eval_keys) or "none"
            raise ConfigError(f"evaluate.task.{bad[0]}: test episodes of the {self.name} family may change only "
                              f"{allowed}; the generator was trained for the rest")
        values = {k: getattr(self.cfg, k) for k in self.cfg.__dataclass_fields__}
        return type(self)(type(self.cfg)(**{**values, **changes}), self.endpoint_url)

    def weights_for_ways(self, mean: torch.Tensor, std: torch.Tensor, theta0: torch.Tensor,
                         ways: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The normaliser's statistics and theta_0 ``(D,)`` carried over to ``ways``-way networks."""
        raise DataError(f"the {self.name} family makes networks of one output size")

    # -- config-level hooks: classmethods, they run before a family is built ---------------

    @classmethod
    def defaults(cls, cfg) -> Dict[str, Any]:
        """Values for config keys left null (dotted key -> value), measured for this family."""
        return {}

    @classmethod
    def check(cls, cfg) -> None:
        """Checks across config sections (raise :class:`ConfigError` naming the key)."""
        if cfg.trajectory.theta0 == "prototype" and not cls.has_support_start(cfg.task):
            raise ConfigError(f"config key 'trajectory.theta0': prototype needs a start computed from the support, "
                              f"which the {cls.name} family does not define for this task config")

    @classmethod
    def prepare(cls, cfg):
        """What every stage needs made once per run root before it starts (e.g. a trained feature
        extractor); returns the config that points at it. Nothing by default."""
        return cfg

    def describe(self) -> dict:
        """Facts about the family worth recording in a dataset manifest."""
        return {"family": self.name, "metric": self.metric_name}


class RegressionFamily(TaskFamily):
    """Real-valued targets: mean squared error is both loss and metric; supports are encoded by a
    permutation-invariant set encoder over (x, y) pairs, with random Fourier features of x and a
    closed-form ridge fit when ``model.encoder_fourier`` > 0."""

    metric_name = "mse"
    higher_is_better = False

    def loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # explicit MSE: F.mse_loss has no correct batching rule under nested vmap (torch 2.13)
        return (pred - y).square().mean()

    metric = loss

    def targets_to_torch(self, y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(y)).float()

    def build_encoder(self, model_cfg, cond_dim: int, dim: int) -> nn.Module:
        from ltdi_ray.generator.encoders import SetEncoder

        fields = self.fields()
        return SetEncoder(fields["pool_x"][0][-1], fields["pool_y"][0][-1], cond_dim, model_cfg.encoder_width,
                          model_cfg.encoder_fourier, model_cfg.encoder_fourier_scale, model_cfg.encoder_ridge)

    @classmethod
    def defaults(cls, cfg) -> Dict[str, Any]:
        # the ridge fit of the support: lambda = 1e-4 with Fourier features (docs/results/method-choices.md)
        return {"model.encoder_ridge": 1e-4 if cfg.model.encoder_fourier > 0 else 0.0}


class ClassificationFamily(TaskFamily):
    """N-way classification: cross-entropy loss, accuracy metric, integer labels 0..N-1; pools are
    N class-major blocks of equal size (``pool_classes``) and supports hold K of each class."""

    metric_name = "accuracy"
    higher_is_better = True

    @property
    def pool_classes(self) -> int:
        return self.cfg.ways

    def loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(pred, y)

    def metric(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (pred.argmax(-1) == y).float().mean()

    def targets_to_torch(self, y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(y)).long()

    def support_ways(self, sy: torch.Tensor) -> Optional[int]:
        """N of the supports' labels 0..N-1 (every class in every task)."""
        ways = int(sy.max()) + 1
        if int(sy.min()) < 0 or ways < 2:
            raise DataError(f"support_y must hold class labels 0..N-1 with N >= 2, got values in "
                            f"[{int(sy.min())}, {ways - 1}]")
        present = torch.nn.functional.one_hot(sy, ways).sum(1) > 0  # (B, N)
        if not present.all():
            task, label = (~present).nonzero()[0].tolist()
            raise DataError(f"support_y of task {task} has no example of class {label} (labels must be 0..N-1)")
        return ways
