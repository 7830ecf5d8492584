"""The public generation API: ``load_generator(uri)`` -> :class:`WeightGenerator`.

    gen = ltdi_ray.load_generator("./ltdi_runs/sinusoid/generator")
    model = gen.generate(support_x, support_y)          # a ready torch.nn.Module, no gradient steps
    thetas = gen.generate_batch(sx, sy, num_samples=4)  # (B, D) flat weights for B tasks at once
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.func import functional_call

from ltdi_ray.base_nets.paramspec import ParamSpec
from ltdi_ray.config.compose import config_from_plain
from ltdi_ray.errors import DataError
from ltdi_ray.generator.build import DataFacts, build_diffusion, build_model, chain_starts
from ltdi_ray.generator.checkpoint import read_meta, read_tensors
from ltdi_ray.generator.normalizer import WeightNormalizer
from ltdi_ray.storage.fs import Location
from ltdi_ray.tasks import TaskFamily, make_family
from ltdi_ray.trajectories.inner import evaluate, make_functional
from ltdi_ray.trajectories.theta0 import Theta0


@dataclass
class WaysView:
    """What generating and scoring networks of one output size needs (heads: N other than trained)."""

    family: TaskFamily
    spec: ParamSpec
    norm: WeightNormalizer
    theta0: Theta0
    loss: Callable
    metric: Callable


class WeightGenerator:
    """A trained generator with everything needed to turn a support set into base-net weights."""

    def __init__(self, cfg, spec: ParamSpec, facts: DataFacts, model: torch.nn.Module, norm: WeightNormalizer,
                 theta0: torch.Tensor, meta: Optional[dict] = None):
        self.cfg, self.spec, self.facts, self.meta = cfg, spec, facts, meta or {}
        self.family = make_family(cfg.task, cfg.storage.endpoint_url)
        self.model, self.norm = model.eval(), norm
        self.theta0 = Theta0(cfg.trajectory.theta0, theta0)
        self.diffusion = build_diffusion(cfg)
        self.net = self.family.build_net()
        self.device = torch.device("cpu")
        self._views: Dict[Optional[int], WaysView] = {}

    def to(self, device) -> "WeightGenerator":
        self.device = torch.device(device)
        self.model.to(self.device)
        self.norm.to(self.device)
        self.theta0 = self.theta0.to(self.device)
        self.net.to(self.device)
        self._views.clear()
        return self

    def view(self, ways: Optional[int] = None) -> WaysView:
        """Family, spec, normaliser, theta_0 and losses for ``ways``-way networks (the trained setting by
        default; other N where the family allows it: its ``with_ways`` and ``weights_for_ways``)."""
        if ways not in self._views:
            family = self.family.with_ways(ways)
            if family is not self.family:
                net = family.build_net().to(self.device)
                spec = ParamSpec.from_module(net)
                mean, std, shared = self.family.weights_for_ways(self.norm.mean, self.norm.std, self.theta0.shared, ways)
                norm, theta0 = WeightNormalizer(mean, std, self.norm.floor), Theta0(self.theta0.mode, shared)
            elif ways is not None:  # the trained N, named
                return self._views.setdefault(ways, self.view())
            else:
                family, net, spec, norm, theta0 = self.family, self.net, self.spec, self.norm, self.theta0
            self._views[ways] = WaysView(family, spec, norm, theta0, make_functional(net, spec, family.loss),
                                         make_functional(net, spec, family.metric))
        return self._views[ways]

    def check_support(self, support_x, support_y) -> Tuple[torch.Tensor, torch.Tensor]:
        """Validate a batched support set against the family's episode shapes."""
        fields = self.family.fields()
        want_x, want_y = self.family.input_shape(), tuple(fields["pool_y"][0][1:])
        class_labels = np.dtype(fields["pool_y"][1]).kind in "iu"
        out = []
        for name, value, want in (("support_x", support_x, want_x), ("support_y", support_y, want_y)):
            value = torch.as_tensor(value)
            if value.dim() != len(want) + 2 or tuple(value.shape[2:]) != want:
                raise DataError(f"{name} must have shape (tasks, shots{''.join(f', {w}' for w in want)}), "
                                f"got {tuple(value.shape)}")
            if value.shape[0] == 0 or value.shape[1] == 0:
                raise DataError(f"{name} must hold at least one task and one shot, got shape {tuple(value.shape)}")
            labels = name == "support_y" and class_labels
            if labels and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
                raise DataError(f"support_y must hold integer class labels, got {value.dtype}")
            if not (labels or value.is_floating_point()):
                raise DataError(f"{name} must be a floating-point tensor, got {value.dtype}")
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise DataError(f"{name} contains NaN or Inf")
            out.append(value.to(self.device, torch.float32 if value.is_floating_point() else torch.long))
        if out[0].shape[:2] != out[1].shape[:2]:
            raise DataError(f"support_x {tuple(out[0].shape[:2])} and support_y {tuple(out[1].shape[:2])} "
                            "disagree on (tasks, shots)")
        return out[0], out[1]

    def _chain_inputs(self, support_x, support_y, num_samples: int, seed: Optional[int]):
        """Checked network inputs ``(sx, sy)``, the view, conditions and normalised chain starts
        ``(B * num_samples, ...)``, and the sampling generator."""
        sx, sy = self.check_support(support_x, support_y)
        ways = self.family.support_ways(sy)
        view = self.view(ways)
        sx = view.family.net_input(sx)
        rng = torch.Generator(device=self.device)
        rng.manual_seed(0 if seed is None else seed)
        other_ways = None if view.family is self.family else ways
        cond = self.model.cond(sx, sy, other_ways).repeat_interleave(num_samples, dim=0)
        start = chain_starts(view.theta0, view.family, view.norm, sx, sy, num_samples)
        spread = self.cfg.diffusion.sample_start_noise
        if num_samples > 1 and spread > 0 and self.diffusion.starts_from_theta0:
            # candidate 0 of every task starts at theta_0, the others around it (the bridge's chain
            # is deterministic given its start, so this is where the candidates differ)
            extra = spread * torch.randn(start.shape, generator=rng, device=self.device)
            extra[::num_samples] = 0
            start = start + extra
        return sx, sy, view, cond, start, rng

    @torch.no_grad()
    def generate_batch(self, support_x, support_y, num_samples: int = 1, seed: Optional[int] = None,
                       sampler: Optional[str] = None, sample_steps: Optional[int] = None) -> torch.Tensor:
        """Weights for B tasks in one batched chain: supports ``(B, K, ...)`` -> ``(B, D)``.

        With ``num_samples = n`` every task gets n candidates and keeps the one with the lowest
        loss on its own support set.
        """
        if num_samples < 1:
            raise DataError(f"num_samples must be >= 1, got {num_samples}")
        sx, sy, view, cond, start, rng = self._chain_inputs(support_x, support_y, num_samples, seed)
        bsz = sx.shape[0]
        z = self.diffusion.sample(self.model.denoiser, cond, view.spec.dim, start=start,
                                  sampler=sampler or self.cfg.diffusion.sampler,
                                  sample_steps=sample_steps or self.cfg.diffusion.sample_steps, generator=rng)
        thetas = view.norm.denormalize(z).view(bsz, num_samples, -1)
        if num_samples == 1:
            return thetas[:, 0]
        support_loss = evaluate(view.loss, thetas, sx, sy)  # (B, n)
        best = support_loss.nan_to_num(float("inf")).argmin(dim=1)
        return thetas[torch.arange(bsz, device=self.device), best]

    @torch.no_grad()
    def generate_chain(self, support_x, support_y, seed: Optional[int] = None) -> List[Tuple[int, torch.Tensor]]:
        """The reverse chain of B tasks with the configured sampler: ``[(diffusion step, weights (B, D))]``
        from T (the start) down to 0 (what ``generate_batch`` returns)."""
        sx, sy, view, cond, start, rng = self._chain_inputs(support_x, support_y, 1, seed)
        _, chain = self.diffusion.sample(self.model.denoiser, cond, view.spec.dim, start=start,
                                         sampler=self.cfg.diffusion.sampler, sample_steps=self.cfg.diffusion.sample_steps,
                                         generator=rng, return_chain=True)
        return [(int(t), view.norm.denormalize(z)) for t, z in chain]

    def generate(self, support_x, support_y, num_samples: int = 1, seed: Optional[int] = None) -> torch.nn.Module:
        """A ready base network for one task: ``support_x (K, ...)``, ``support_y (K, ...)``."""
        sx, sy = torch.as_tensor(support_x), torch.as_tensor(support_y)
        theta = self.generate_batch(sx.unsqueeze(0), sy.unsqueeze(0), num_samples, seed)[0]
        return self.to_module(theta)

    def _view_of(self, dim: int) -> WaysView:
        """The view whose weights have length ``dim`` (the trained one, or one generated for another N)."""
        for view in (self.view(), *self._views.values()):
            if view.spec.dim == dim:
                return view
        raise DataError(f"weights of length {dim} fit none of this generator's networks (D={self.spec.dim}; "
                        "weights for another number of classes come from generate_batch)")

    def to_module(self, theta: torch.Tensor) -> torch.nn.Module:
        """A fresh base network holding the flat weights ``theta (D,)``, taking the users' inputs
        (Omniglot: images ``(N, 1, S, S)`` in [0, 1])."""
        view = self._view_of(theta.shape[-1])
        net = view.family.build_net().to(self.device)
        with torch.no_grad():
            for name, value in view.spec.unflatten(theta.to(self.device)).items():
                net.get_parameter(name).copy_(value)
        return view.family.deployable(net).eval()

    def query_metric(self, thetas: torch.Tensor, episodes: dict) -> torch.Tensor:
        """The family's metric of weights ``(B, D)`` on the query sets of episodes ``(B, ...)`` -> ``(B,)``."""
        view = self._view_of(thetas.shape[-1])
        qx = view.family.to_torch(episodes["query_x"]).to(self.device)
        qy = view.family.targets_to_torch(episodes["query_y"]).to(self.device)
        return evaluate(view.metric, thetas.unsqueeze(1), qx, qy)[:, 0]

    def predict(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The base network at flat weights ``theta (D,)`` on inputs ``x (N, ...)``."""
        return functional_call(self.net, self.spec.unflatten(theta), (x,))


def load_generator(uri: str, endpoint_url: Optional[str] = None, device: str = "cpu") -> WeightGenerator:
    """Load a generator checkpoint directory (local path or s3://) written by ``train``."""
    loc = Location.parse(uri, endpoint_url)
    loc.check_reachable()
    meta = read_meta(loc)
    cfg = config_from_plain(meta["config"])
    if endpoint_url is not None:
        cfg.storage.endpoint_url = endpoint_url
    spec = ParamSpec.from_json(meta["param_spec"])
    facts = DataFacts(dim=spec.dim, checkpoint_steps=list(meta["checkpoint_steps"]))
    family = make_family(cfg.task, cfg.storage.endpoint_url)
    model = build_model(cfg, family, facts)
    name = lambda part: loc.child(meta["files"][part]["path"])  # noqa: E731
    try:
        model.load_state_dict(read_tensors(loc, meta, "model"))
    except RuntimeError as err:
        raise DataError(f"{name('model')} does not fit the generator its config describes: "
                        f"{str(err).splitlines()[0]}") from None
    stats = read_tensors(loc, meta, "stats")
    if any(k not in stats or stats[k].shape != (spec.dim,) for k in ("mean", "std", "theta0")):
        raise DataError(f"{name('stats')} holds statistics for another ParamSpec (mean, std, theta0 of D={spec.dim})")
    norm = WeightNormalizer(stats["mean"], stats["std"])  # as trained: the family's normaliser made them
    return WeightGenerator(cfg, spec, facts, model, norm, stats["theta0"], meta).to(device)
