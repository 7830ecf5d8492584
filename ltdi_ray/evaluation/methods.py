"""The registry of evaluated methods: one function each, name -> weights for a batch of test episodes.

A method receives the :class:`Evaluation` (the generator, its test episodes, their supports and the
evaluate config) and returns weights ``(n, D)`` for the n episodes, or, for a predictor that has no
base-net weights, :class:`Predictions` on the query inputs; the evaluate stage scores every method
with the family's metric on the same query sets, and the report compares them. Adding a method is one
decorated function here. The controls of docs/results/protocol.md are methods too: each one removes
or replaces one part of the generator (the diffusion, the segments, the condition, the meta-training)
with everything else equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch

from ltdi_ray.meta.meta_init import METHODS as META_INITS
from ltdi_ray.meta.meta_init import adapt
from ltdi_ray.trajectories.inner import run_batched
from ltdi_ray.trajectories.theta0 import initial_theta


@dataclass
class Evaluation:
    """What every method sees: ``cfg`` (the evaluate stage's config), the generator ``gen`` and its ways
    ``view``, the test ``episodes`` (drawn by ``tasks``), their supports as users pass them (``raw_sx``) and
    as the networks take them (``sx``, ``sy``), and ``settings`` where a method records how it ran."""

    cfg: Any
    gen: Any
    view: Any
    episodes: dict
    raw_sx: torch.Tensor
    sx: torch.Tensor
    sy: torch.Tensor
    tasks: Any = None  # the family that drew the episodes (the view's with evaluate.task's changes); None: view's
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
class Predictions:
    """What a method without base-net weights returns: its outputs on every episode's query inputs
    ``(n, Q, ...)``, scored with the family's metric as weights are."""

    values: torch.Tensor


@dataclass(frozen=True)
class Method:
    """An evaluated method: ``run(ev) -> (n, D)`` (or :class:`Predictions`), timed per task; ``skip(ev)``: why
    it does not apply, or None. What a method trains before it can run is not part of its time: ``launch(ev)``
    starts such work in the background before any method runs (``cost(ev)``: launch order, longest first),
    ``prepare(ev)`` does it in the foreground just before; the stage leaves either's result in
    ``ev.ready[name]``."""

    run: Callable[[Evaluation], Union[torch.Tensor, Predictions]]
    skip: Callable[[Evaluation], Optional[str]] = lambda ev: None
    launch: Optional[Callable[[Evaluation], Any]] = None
    cost: Callable[[Evaluation], float] = lambda ev: 0.0
    prepare: Optional[Callable[[Evaluation], Any]] = None
    default: bool = True  # in evaluate.methods by default (False: it trains another generator or costs long)
    step_keys: Tuple[str, ...] = ()  # config keys of its SGD step size, which benchmarks choose on validation tasks


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


def _fine_tune(ev: Evaluation, name: str, steps: int, lr: float) -> torch.Tensor:
    """``steps`` steps of the collection optimiser (``trajectory.*``: Adam or SGD, SAM) of size ``lr`` from the
    base init on every K-shot support."""
    t = ev.gen.cfg.trajectory
    ev.settings[name] = {"optimizer": t.optimizer, "lr": lr, "steps": steps, "data": "support"}
    opt = replace(t, lr=lr, steps=steps, save_every=steps)
    return run_batched(ev.view.loss, ev.base.expand(ev.n, -1), ev.sx, ev.sy, opt)[:, -1]


@method("finetune")
def finetune(ev: Evaluation) -> torch.Tensor:
    """The collection optimiser at its own step size for ``evaluate.finetune_steps`` steps (the trajectories'
    length by default)."""
    t = ev.gen.cfg.trajectory
    return _fine_tune(ev, "finetune", ev.cfg.evaluate.finetune_steps or t.steps, t.lr)


@method("finetune_short", default=False, step_keys=("evaluate.finetune_short_lr",))
def finetune_short(ev: Evaluation) -> torch.Tensor:
    """The collection optimiser for ``evaluate.adapt_steps`` steps (the budget the meta-learned inits adapt with)
    at ``evaluate.finetune_short_lr``: few steps want a larger step than the trajectories'."""
    e = ev.cfg.evaluate
    return _fine_tune(ev, "finetune_short", e.adapt_steps, e.finetune_short_lr or ev.gen.cfg.trajectory.lr)


# name -> (meta-learning rule, outer loss on the whole pool minus the support). maml_pool is the control
# that sees what the generator's targets were fit to: every pool point of a training task, not 10 of them
BASELINES = {**{rule: (rule, False) for rule in META_INITS}, "maml_pool": ("maml", True)}


def _launch_meta_init(name: str) -> Callable[[Evaluation], Any]:
    def launch(ev: Evaluation):
        from ltdi_ray.evaluation.background import launch_meta_init

        return launch_meta_init(ev, name, *BASELINES[name])
    return launch


def _meta_init_cost(name: str) -> Callable[[Evaluation], float]:
    def cost(ev: Evaluation) -> float:
        b = ev.cfg.evaluate.baseline
        rule, pool = BASELINES[name]
        inner = b.reptile_inner_steps if rule == "reptile" else b.inner_steps
        return b.meta_steps * (inner + 1) * (2 if rule == "maml" else 1) * (3 if pool else 1)
    return cost


def _meta_init(name: str) -> Callable[[Evaluation], torch.Tensor]:
    def run(ev: Evaluation) -> torch.Tensor:
        """A meta-learned init (meta-trained on the dataset's training pools), then SGD on the support."""
        theta, ev.settings[name] = ev.ready.pop(name)
        e = ev.cfg.evaluate
        ev.settings[name]["adapt"] = {"optimizer": "sgd", "lr": e.adapt_lr, "steps": e.adapt_steps}
        return ev.sgd(theta, e.adapt_lr)
    return run


for _name in BASELINES:  # maml, fomaml, reptile, maml_pool
    # MAML's protocol: a baseline adapts at test time with the step size it was meta-trained for
    METHODS[_name] = Method(_meta_init(_name), _trained_on_the_dataset, _launch_meta_init(_name),
                            _meta_init_cost(_name), default=_name != "maml_pool",
                            step_keys=("evaluate.adapt_lr", "evaluate.baseline.inner_lr"))


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


@method("protonet_sgd", skip=_no_support_start, step_keys=("evaluate.start_adapt_lr",))
def protonet_sgd(ev: Evaluation) -> torch.Tensor:
    """The family's support start, then ``evaluate.adapt_steps`` SGD steps of ``evaluate.start_adapt_lr`` on
    the support: what the generator's starting point gives with plain fine-tuning."""
    e = ev.cfg.evaluate
    ev.settings["protonet_sgd"] = {"optimizer": "sgd", "lr": e.start_adapt_lr, "steps": e.adapt_steps}
    return ev.sgd(ev.view.family.support_start(ev.sx, ev.sy), e.start_adapt_lr)


def _no_in_context(ev: Evaluation) -> Optional[str]:
    if ev.view.family.has_in_context(ev.view.family.cfg):
        return None
    return "the family has no in-context predictor (a language model reading the examples in its prompt)"


@method("in_context", skip=_no_in_context)
def in_context(ev: Evaluation) -> Predictions:
    """The frozen model reading the support in its input (a language model: the K examples in its prompt),
    no weights changed; its time includes the longer prompt."""
    fam = ev.view.family
    ev.settings["in_context"] = {"examples": int(ev.sy.shape[1]), "rule": "the family's in_context"}
    return Predictions(fam.in_context(ev.raw_sx, ev.sy, fam.decode(ev.episodes["query_x"])))


def _no_encoder_fit(ev: Evaluation) -> Optional[str]:
    has_fit = getattr(ev.gen.model.encoder, "has_fit", False)
    return None if has_fit else "the task encoder fits no predictor of its own (regression: model.encoder_ridge=0)"


@method("encoder_fit", skip=_no_encoder_fit)
def encoder_fit(ev: Evaluation) -> Predictions:
    """The task encoder's own closed-form fit used as the predictor by itself (regression: the ridge fit on
    the encoder's Fourier features, ``model.encoder_ridge``): what the condition already knows."""
    qx = ev.view.family.to_torch(ev.episodes["query_x"])  # network inputs, as the support ev.sx
    ev.settings["encoder_fit"] = {"rule": "the encoder's closed-form fit on the support, no generator"}
    with torch.no_grad():
        return Predictions(ev.gen.model.encoder.fit_predict(ev.sx, ev.sy, qx))


# ablations: generators trained like the evaluated one with these config keys changed (evaluation/ablations.py),
# each with whether it is in evaluate.methods by default
ABLATIONS = {
    "single_level": {"train": {"meta": "none"}},
    # the paper's bi-level meta-training (Reptile over the generator) at equal outer steps; our loss terms
    # are single-level and drop out
    "bilevel": {"train": {"meta": "reptile", "function_loss": None, "chain_loss": None}},
    # what the diffusion adds, everything else equal (the one that is the evaluated generator is skipped):
    # the bridge with k = 3 segments, with one (the clean test of local targets), and no diffusion at all
    # (the same encoder and network trained to map theta_0 to theta_M in one call, same losses)
    "bridge_k3": {"diffusion": {"variant": "bridge", "segments": 3}},
    "bridge_k1": {"diffusion": {"variant": "bridge", "segments": 1}},
    "hypernet": {"diffusion": {"variant": "hypernet", "segments": 1}},
    # vanilla diffusion: x0 prediction (the stable one) and the full stochastic DDPM chain, the sampler that
    # makes best-of-n work for it (one DDIM jump scores better with a single sample: docs/results/sinusoid.md)
    "vanilla": {"diffusion": {"variant": "local_consistency", "segments": 1, "parameterization": "x0",
                              "weighting": "x0", "sampler": "ddpm", "sample_steps": None},
                "train": {"function_loss": None, "chain_loss": None}},  # our terms need the bridge
}


def _not_the_generator(name: str) -> Callable[[Evaluation], Optional[str]]:
    def skip(ev: Evaluation) -> Optional[str]:
        from ltdi_ray.evaluation.ablations import is_the_generator

        if is_the_generator(ev.cfg, ev.gen.cfg, ABLATIONS[name]):
            return "it is the evaluated generator (ltdi)"
        return _trained_on_the_dataset(ev)
    return skip


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
    METHODS[_name] = Method(_ablation(_name), _not_the_generator(_name), prepare=_train_ablation(_name),
                            default=_name in ("bridge_k3", "hypernet"))  # diffusion or not: the one that is not ltdi


def _bilevel_at_equal_time(ev: Evaluation):
    """The bilevel ablation with its outer steps cut to the evaluated generator's training time: steps per
    epoch times the ratio of the two runs' measured training throughputs (the equal-step ``bilevel`` run
    is trained first where it is not yet, for its throughput)."""
    from ltdi_ray.evaluation.ablations import ablation_generator, tasks_per_s

    bilevel = ablation_generator(ev.cfg, ev.gen, "bilevel", ABLATIONS["bilevel"])
    ratio = tasks_per_s(bilevel) / tasks_per_s(ev.gen)
    steps = max(1, round(ev.gen.cfg.train.steps_per_epoch * ratio))
    changes = {"train": {**ABLATIONS["bilevel"]["train"], "steps_per_epoch": steps}}
    gen = ablation_generator(ev.cfg, ev.gen, "bilevel_time", changes)
    ev.settings["bilevel_time"] = {"throughput_ratio": round(ratio, 4), "steps_per_epoch": steps,
                                   "epochs": gen.cfg.train.epochs, "meta": gen.cfg.train.meta}
    return gen


METHODS["bilevel_time"] = Method(_ablation("bilevel_time"), _trained_on_the_dataset, prepare=_bilevel_at_equal_time,
                                 default=False)


@method("ltdi")
def ltdi(ev: Evaluation) -> torch.Tensor:
    """The evaluated generator, zero gradient steps."""
    return ev.generate(ev.gen)


@method("ltdi_finetune", step_keys=("evaluate.ltdi_adapt_lr",))
def ltdi_finetune(ev: Evaluation) -> torch.Tensor:
    """The generator's weights, then the same SGD steps as MAML (``evaluate.ltdi_adapt_lr``)."""
    e = ev.cfg.evaluate
    ev.settings["ltdi_finetune"] = {"optimizer": "sgd", "lr": e.ltdi_adapt_lr, "steps": e.adapt_steps}
    return ev.sgd(ev.generate(ev.gen), e.ltdi_adapt_lr)


@method("condition_shuffle")
def condition_shuffle(ev: Evaluation) -> torch.Tensor:
    """The generator fed another test task's support (task i gets task i + 1's), scored on task i's queries:
    a generator that ignored its condition would score as ``ltdi`` does."""
    ev.settings["condition_shuffle"] = {"support": "task i + 1's (mod n)"}
    e = ev.cfg.evaluate
    return ev.gen.generate_batch(ev.raw_sx.roll(-1, 0), ev.sy.roll(-1, 0), e.num_samples, seed=ev.cfg.train.seed)
