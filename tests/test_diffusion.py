"""Numerical reference tests of the diffusion process (docs/design.md 2.3)."""

import math

import pytest
import torch

from ltdi_ray.diffusion import SCHEDULES, LocalConsistencyDiffusion, Schedule, segment_ends, target_indices

T = 20


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedules_go_from_clean_to_noise_on_t_over_T(name):
    for steps in (10, 20, 100):
        s = Schedule.make(name, steps)
        assert s.abar[0] == 1 and (s.abar[1:] <= s.abar[:-1]).all() and s.abar[-1] < 1e-3
        assert ((s.alpha > 0) & (s.alpha <= 1)).all()
        torch.testing.assert_close(torch.cumprod(s.alpha, 0), s.abar)


def test_schedules_follow_their_published_formulas():
    """abar at u = t / T, written out: the VP-SDE linear (beta 0.1 .. 20), Nichol & Dhariwal's cosine (s = 0.008)
    and the sigmoid schedule of Jabri et al. on [-3, 3]."""
    u = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    linear = torch.exp(-(0.1 * u + 0.5 * 19.9 * u**2))
    cosine = torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    sigmoid = torch.tensor([(sig(3) - sig(-3 + 6 * v)) / (sig(3) - sig(-3)) for v in u.tolist()], dtype=torch.float64)
    for name, want in (("linear", linear), ("cosine", cosine), ("sigmoid", sigmoid)):
        torch.testing.assert_close(Schedule.make(name, 4).abar[1:4], want)


def test_vp_linear_keeps_the_last_alpha_away_from_zero():
    assert abs(float(Schedule.make("linear", 20).alpha[-1]) - 0.377) < 0.01


def test_segment_ends_and_targets():
    assert segment_ends(20, 3).tolist() == [13, 7, 0] and segment_ends(20, 1).tolist() == [0]
    assert target_indices(list(range(0, 101, 10)), 3) == [3, 7, 10]
    assert target_indices(list(range(0, 101, 10)), 1) == [10]


def test_forward_marginals_match_the_closed_form():
    s = Schedule.make("linear", T)
    diff = LocalConsistencyDiffusion(s, segments=3)
    gen = torch.Generator().manual_seed(0)
    target = torch.tensor([1.5, -2.0], dtype=torch.float64)
    for end in segment_ends(T, 3).tolist():
        x = target.expand(200_000, 2).clone()
        for step in range(end + 1, T + 1):  # the per-step chain from the target at e_i
            x = s.alpha[step].sqrt() * x + s.beta[step].sqrt() * torch.randn(x.shape, generator=gen, dtype=x.dtype)
            if step in (end + 1, (end + T) // 2, T):
                abar_l = float(diff.local_abar(torch.tensor([step]), torch.tensor([end])))
                torch.testing.assert_close(x.mean(0), abar_l**0.5 * target, atol=0.02, rtol=0)
                torch.testing.assert_close(x.var(0), torch.full((2,), 1 - abar_l, dtype=x.dtype), atol=0.02, rtol=0)


def _oracle_output(diff, target, x_t, t, end):
    """What the network must output for the global step to equal segment i's step."""
    abar = diff.schedule.abar[t].unsqueeze(-1)
    abar_l = diff.local_abar(t, end).unsqueeze(-1)
    eps_l = (x_t - abar_l.sqrt() * target) / (1 - abar_l).sqrt()
    a, b, _ = diff.global_coefs(t)
    x0_star = (diff.segment_mean(target, x_t, t, end) - b.unsqueeze(-1) * x_t) / a.unsqueeze(-1)
    return {"eps": ((1 - abar) / (1 - abar_l)).sqrt() * eps_l, "x0": x0_star,
            "v": (abar.sqrt() * x_t - x0_star) / (1 - abar).sqrt()}


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
def test_segment_minimiser_turns_the_global_step_into_the_segment_step(param):
    diff = LocalConsistencyDiffusion(Schedule.make("linear", T), segments=4, parameterization=param)
    gen = torch.Generator().manual_seed(1)
    n, dim = 64, 5
    end = diff.ends[torch.randint(0, 4, (n,), generator=gen)]
    t = end + 1 + (torch.rand(n, generator=gen, dtype=torch.float64) * (T - end)).long()
    target = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    x_t = diff.q_sample(target, t, end, torch.randn(n, dim, generator=gen, dtype=torch.float64))
    out = _oracle_output(diff, target, x_t, t, end)[param]
    torch.testing.assert_close(diff.model_mean(out, x_t, t), diff.segment_mean(target, x_t, t, end))
    # segment i's step, written out: the DDPM posterior mean with the segment's own abar^(i)
    al_t, al_prev = diff.local_abar(t, end).unsqueeze(-1), diff.local_abar(t - 1, end).unsqueeze(-1)
    alpha = diff.schedule.alpha[t].unsqueeze(-1)
    posterior = (al_prev.sqrt() * (1 - alpha) * target + alpha.sqrt() * (1 - al_prev) * x_t) / (1 - al_t)
    torch.testing.assert_close(diff.segment_mean(target, x_t, t, end), posterior)
    last = end == 0  # the last segment is plain DDPM towards its target: the minimiser is the textbook one
    assert last.any()
    abar = diff.schedule.abar[t].unsqueeze(-1)
    eps = (x_t - abar.sqrt() * target) / (1 - abar).sqrt()
    textbook = {"eps": eps, "x0": target, "v": abar.sqrt() * eps - (1 - abar).sqrt() * target}[param]
    torch.testing.assert_close(out[last], textbook[last])
    # the eps-form minimiser is docs/design.md 2.3.1's f = sqrt((1 - abar_t) / (1 - abar^(i)_t)) * eps
    if param == "eps":
        eps = (x_t - diff.local_abar(t, end).sqrt().unsqueeze(-1) * target) / (1 - diff.local_abar(t, end)).sqrt().unsqueeze(-1)
        torch.testing.assert_close(out, ((1 - diff.schedule.abar[t]) / (1 - diff.local_abar(t, end))).sqrt().unsqueeze(-1) * eps)


def test_x0_weighting_is_the_x0_space_error_for_one_segment():
    diff = LocalConsistencyDiffusion(Schedule.make("linear", T), segments=1, parameterization="x0", weighting="x0")
    model = lambda x, t, c: 0.5 * x + c  # noqa: E731
    targets = torch.randn(8, 1, 3, dtype=torch.float64)
    cond = torch.randn(8, 3, dtype=torch.float64)
    loss = diff.training_loss(model, targets, cond, torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(2)
    t = 1 + torch.floor(torch.rand(8, generator=gen, dtype=torch.float64) * T).long()
    eps = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    abar = diff.schedule.abar[t].unsqueeze(-1)
    x_t = abar.sqrt() * targets[:, 0] + (1 - abar).sqrt() * eps
    torch.testing.assert_close(loss, (model(x_t, t, cond) - targets[:, 0]).square().mean())


def test_one_segment_with_eps_weighting_is_the_standard_ddpm_loss():
    diff = LocalConsistencyDiffusion(Schedule.make("cosine", T), segments=1, parameterization="eps", weighting="eps")
    weight = torch.randn(3, 3, dtype=torch.float64)
    model = lambda x, t, c: torch.tanh(x @ weight) + t.unsqueeze(-1) / T + c  # noqa: E731
    targets = torch.randn(8, 1, 3, dtype=torch.float64)
    cond = torch.randn(8, 3, dtype=torch.float64)
    loss = diff.training_loss(model, targets, cond, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)  # replay the same draws: t first, then the noise
    t = 1 + torch.floor(torch.rand(8, generator=gen, dtype=torch.float64) * T).long()
    eps = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    abar = diff.schedule.abar[t].unsqueeze(-1)
    x_t = abar.sqrt() * targets[:, 0] + (1 - abar).sqrt() * eps
    torch.testing.assert_close(loss, (model(x_t, t, cond) - eps).square().mean())


@pytest.mark.parametrize("param", ["eps", "x0", "v"])
def test_oracle_loss_is_zero(param):
    diff = LocalConsistencyDiffusion(Schedule.make("sigmoid", T), segments=1, parameterization=param)
    end0 = torch.zeros(1, dtype=torch.long)

    def oracle(x, t, target):  # the condition carries the task's true target
        return _oracle_output(diff, target, x, t, end0.expand(len(t)))[param]

    targets = torch.randn(16, 1, 4, dtype=torch.float64)
    assert float(diff.training_loss(oracle, targets, targets[:, 0])) < 1e-20


@pytest.mark.parametrize("sampler, steps", [("ddpm", None), ("ddim", None), ("ddim", 5)])
@pytest.mark.parametrize("param", ["eps", "x0", "v"])
def test_chain_with_an_oracle_lands_on_its_target(sampler, steps, param):
    diff = LocalConsistencyDiffusion(Schedule.make("linear", T), segments=1, parameterization=param)
    end0 = torch.zeros(1, dtype=torch.long)
    target = torch.randn(32, 6)

    def oracle(x, t, cond):
        return _oracle_output(diff, cond.double(), x.double(), t, end0.expand(len(t)))[param].float()

    out = diff.sample(oracle, target, 6, sampler=sampler, sample_steps=steps, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, target, atol=1e-4, rtol=1e-4)


def test_local_consistency_chain_passes_each_target():
    k = 3
    diff = LocalConsistencyDiffusion(Schedule.make("linear", T), segments=k, parameterization="x0")
    ends = diff.ends.tolist()
    targets = torch.randn(k, 4, dtype=torch.float64)

    def oracle(x, t, cond):  # segment i governs steps (e_i, e_{i-1}]
        i = sum(int(t[0]) <= e for e in ends[:-1])
        end = torch.full_like(t, ends[i])
        return _oracle_output(diff, targets[i].expand_as(x).double(), x.double(), t, end)["x0"].float()

    n = 20_000
    final, chain = diff.sample(oracle, torch.zeros(n, 1), 4, return_chain=True,
                               generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(final, targets[-1].float().expand(n, 4), atol=1e-4, rtol=1e-4)
    states = dict(chain)
    for i, end in enumerate(ends[:-1]):  # x_{e_i} = target_i + the global step's noise
        _, _, var = diff.global_coefs(torch.tensor([end + 1]))
        dev = states[end].double() - targets[i]
        torch.testing.assert_close(dev.mean(0), torch.zeros(4, dtype=torch.float64), atol=0.02, rtol=0)
        torch.testing.assert_close(dev.std(0), var.sqrt().expand(4), atol=0.02, rtol=0.02)


def test_hypernet_is_one_call_from_theta0_to_theta_m():
    from ltdi_ray.config.method import DiffusionConfig
    from ltdi_ray.diffusion import make_diffusion
    from ltdi_ray.errors import ConfigError

    process = make_diffusion(DiffusionConfig(variant="hypernet", segments=1))
    assert process.checkpoint_indices([0, 10, 20, 30]) == [0, 3]
    theta0, theta_m = torch.randn(6), torch.randn(4, 6)
    targets = torch.stack([theta0.expand(4, -1), theta_m], dim=1)
    calls = []

    def oracle(x, t, cond):  # the residual step to the condition, which here is theta_M itself
        calls.append(t)
        return cond - x

    assert float(process.training_loss(oracle, targets, theta_m)) == pytest.approx(0.0, abs=1e-12)
    calls.clear()
    out, chain = process.sample(oracle, theta_m, 6, theta0, return_chain=True)
    torch.testing.assert_close(out, theta_m)
    assert len(calls) == 1 and bool((calls[0] == process.steps).all()) and [s for s, _ in chain] == [process.steps, 0]
    with pytest.raises(ConfigError, match="diffusion.segments': must be 1 for diffusion.variant=hypernet"):
        DiffusionConfig(variant="hypernet", segments=3)
