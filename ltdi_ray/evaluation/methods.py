"""The registry of evaluated methods: one function each, name -> weights for a batch of test episodes.

A method receives the :class:`Evaluation` (the generator, its test episodes, their supports and the
evaluate config) and returns weights ``(n, D)`` for the n episodes; the evaluate stage scores every
method's weights with the family's metric on the same query sets, and the report compares them.
Adding a method is one decorated function here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Callable, Dict, Optional

import torch

from ltdi_ray.meta.meta_init import METHODS as META_INITS
from ltdi_ray.meta.meta_init import adapt
from ltdi_ray.trajectories.inner import run_batched
from ltdi_ray.trajectories.theta0 import initial_theta


@dataclass
class Evaluation:
    """What every method sees: ``cfg`` (the evaluate stage's config), the generator ``gen`` and its ways
    ``view``, the test ``episodes``, their supports as users pass them (``raw_sx``) and as the networks
    take them (``sx``, ``sy``), and ``settings`` where a method records how it ran."""

    cfg: Any
    gen: Any
    view: Any
    episodes: dict
    raw_sx: torch.Tensor
    sx: torch.Tensor
    sy: torch.Tensor
    settings: Dict[str, dict] = field(default_factory=dict)
    ready: Dict[str, Any] = field(default_factory=dict)  # what a method's launch or prepare made, by name
    shared: Dict[str, Any] = field(default_factory=dict)  # what several methods reuse (the baselines' pools)

    @property
    def n(self) -> int:
        return self.sx.shape[0]

    @cached_property
    def base(self) -> torch.Tensor:
        """The base net's own initialisation (``trajectory.init_seed``): where init, finetune and the
        meta-learned baselines start, whatever theta_0 the generator's trajectories started at."""
        return initial_theta(self.view.family, self.gen.cfg.trajectory.init_seed)

    @property
    def other_ways(self) -> bool:
        """Episodes of another output size than the generator was trained for (heads)."""
        return self.view.family is not self.gen.family

    def generate(self, gen) -> torch.Tensor:
        e = self.cfg.evaluate
        return gen.generate_batch(self.raw_sx, self.sy, e.num_samples, seed=self.cfg.train.seed)

    def sgd(self, theta: torch.Tensor, lr: float) -> torch.Tensor:
        """``evaluate.adapt_steps`` SGD steps of size ``lr`` on every support from ``theta``."""
        return adapt(self.view.loss, theta, self.sx, self.sy, self.cfg.evaluate.adapt_steps, lr)


@dataclass(frozen=True)
class Method:
    """An evaluated method: ``run(ev) -> (n, D)``, timed per task; ``skip(ev)``: why it does not apply, or
    None. What a method trains before it can run is not part of its time: ``launch(ev)`` starts such work
    in the background before any method runs (``cost(ev)``: launch order, longest first), ``prepare(ev)``
    does it in the foreground just before; the stage leaves either's result in ``ev.ready[name]``."""

    run: Callable[[Evaluation], torch.Tensor]
    skip: Callable[[Evaluation], Optional[str]] = lambda ev: None
    launch: Optional[Callable[[Evaluation], Any]] = None
    cost: Callable[[Evaluation], float] = lambda ev: 0.0
    prepare: Optional[Callable[[Evaluation], Any]] = None


METHODS: Dict[str, Method] = {}


def method(name: str, **options) -> Callable:
    """Register ``fn(ev) -> weights (n, D)`` as the evaluated method ``name``."""
    def register(fn: Callable[[Evaluation], torch.Tensor]) -> Callable:
        METHODS[name] = Method(fn, **options)
        return fn
    return register


def _trained_on_the_dataset(ev: Evaluation) -> Optional[str]:
    """Methods meta-trained on the dataset's training episodes exist for its output size only."""
    return f"trained for {getattr(ev.gen.cfg.task, 'ways', None)}-way episodes" if ev.other_ways else None


@method("init")
def init(ev: Evaluation) -> torch.Tensor:
    """The base net's own initialisation, no adaptation."""
    return ev.base.expand(ev.n, -1)


@method("finetune")
def finetune(ev: Evaluation) -> torch.Tensor:
    """The collection optimiser (``trajectory.*``) from the base init on the K-shot support."""
    t = ev.gen.cfg.trajectory
    ev.settings["finetune"] = {"optimizer": t.optimizer, "lr": t.lr, "steps": t.steps, "data": "support"}
    return run_batched(ev.view.loss, ev.base.expand(ev.n, -1), ev.sx, ev.sy, replace(t, save_every=t.steps))[:, -1]


def _launch_meta_init(name: str) -> Callable[[Evaluation], Any]:
    def launch(ev: Evaluation):
        from ltdi_ray.evaluation.background import launch_meta_init

        return launch_meta_init(ev, name)
    return launch


def _meta_init_cost(name: str) -> Callable[[Evaluation], float]:
    def cost(ev: Evaluation) -> float:
        b = ev.cfg.evaluate.baseline
        inner = b.reptile_inner_steps if name == "reptile" else b.inner_steps
        return b.meta_steps * (inner + 1) * (2 if name == "maml" else 1)
    return cost


def _meta_init(name: str) -> Callable[[Evaluation], torch.Tensor]:
    def run(ev: Evaluation) -> torch.Tensor:
        """A meta-learned init (meta-trained on the dataset's training pools), then SGD on the support."""
        theta, ev.settings[name] = ev.ready.pop(name)
        e = ev.cfg.evaluate
        ev.settings[name]["adapt"] = {"optimizer": "sgd", "lr": e.adapt_lr, "steps": e.adapt_steps}
        return ev.sgd(theta, e.adapt_lr)
    return run


for _name in META_INITS:  # maml, fomaml, reptile
    METHODS[_name] = Method(_meta_init(_name), _trained_on_the_dataset, _launch_meta_init(_name), _meta_init_cost(_name))


def _no_support_start(ev: Evaluation) -> Optional[str]:
    if ev.view.family.has_support_start(ev.view.family.cfg):
        return None
    return "the family computes no weights from a support (Omniglot: task.generate=head)"


@method("protonet", skip=_no_support_start)
def protonet(ev: Evaluation) -> torch.Tensor:
    """The family's weights computed from the support alone (Omniglot heads: the nearest-class-mean head
    on the frozen features, rows 2 p_i and bias -|p_i|^2)."""
    ev.settings["protonet"] = {"features": getattr(ev.gen.cfg.task, "backbone", None),
                               "rule": "the family's support_start (Omniglot heads: nearest class mean)"}
    return ev.view.family.support_start(ev.sx, ev.sy)


# ablations: generators trained like the evaluated one with these config keys changed (evaluation/ablations.py)
ABLATIONS = {
    "single_level": {"train": {"meta": "none"}},
    # vanilla diffusion: x0 prediction (the stable one) and the full stochastic DDPM chain, the sampler that
    # makes best-of-n work for it (one DDIM jump scores better with a single sample: docs/results/sinusoid.md)
    "vanilla": {"diffusion": {"variant": "local_consistency", "segments": 1, "parameterization": "x0",
                              "weighting": "x0", "sampler": "ddpm", "sample_steps": None},
                "train": {"function_loss": None, "chain_loss": None}},  # our terms need the bridge
}


def _train_ablation(name: str) -> Callable[[Evaluation], Any]:
    def prepare(ev: Evaluation):
        from ltdi_ray.config.compose import to_plain
        from ltdi_ray.evaluation.ablations import ablation_generator

        gen = ablation_generator(ev.cfg, ev.gen, name, ABLATIONS[name])
        ev.settings[name] = {k: to_plain(gen.cfg)[k] for k in ("diffusion", "train")}
        return gen
    return prepare


def _ablation(name: str) -> Callable[[Evaluation], torch.Tensor]:
    def run(ev: Evaluation) -> torch.Tensor:
        """The ablation's generator (trained like the evaluated one with some keys changed), zero steps."""
        return ev.generate(ev.ready.pop(name))
    return run


for _name in ABLATIONS:
    METHODS[_name] = Method(_ablation(_name), _trained_on_the_dataset, prepare=_train_ablation(_name))


@method("ltdi")
def ltdi(ev: Evaluation) -> torch.Tensor:
    """The evaluated generator, zero gradient steps."""
    return ev.generate(ev.gen)


@method("ltdi_finetune")
def ltdi_finetune(ev: Evaluation) -> torch.Tensor:
    """The generator's weights, then the same SGD steps as MAML (``evaluate.ltdi_adapt_lr``)."""
    e = ev.cfg.evaluate
    ev.settings["ltdi_finetune"] = {"optimizer": "sgd", "lr": e.ltdi_adapt_lr, "steps": e.adapt_steps}
    return ev.sgd(ev.generate(ev.gen), e.ltdi_adapt_lr)
