"""Reference tests of the bridge variant (docs/design.md 2.3.2)."""

import pytest
import torch

from ltdi_ray.config.method import DiffusionConfig
from ltdi_ray.diffusion import BridgeDiffusion, Schedule, make_diffusion, segment_ends

T = 20


def _bridge(k=3, noise=0.5, residual=True, schedule="linear", start_noise=0.0, segment_draw="all"):
    return BridgeDiffusion(Schedule.make(schedule, T), k, noise, residual, start_noise, segment_draw)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid"])
def test_position_runs_from_one_to_zero_inside_every_segment(schedule):
    diff = _bridge(schedule=schedule)
    ends = segment_ends(T, 3).tolist()
    starts = [T] + ends[:-1]
    for start, end in zip(starts, ends):
        lam = diff.position(torch.arange(end + 1, start + 1))
        assert abs(float(lam[-1]) - 1) < 1e-9 and float(lam[0]) > 0  # l = 1 at the segment's start
        assert (lam[1:] > lam[:-1]).all()  # monotone within the segment


def _oracle_model(targets, diff):
    """Predicts each task's segment end exactly (as a residual when the variant asks for it)."""
    ends = segment_ends(T, diff.segments)

    def model(x, t, cond):
        seg = (t.unsqueeze(-1) <= ends.unsqueeze(0)).sum(-1)
        end = targets[cond[:, 0].long(), seg + 1]
        return end - x if diff.residual else end

    return model


@pytest.mark.parametrize("sampler,steps,noise", [("ddpm", None, 0.5), ("ddim", None, 0.5), ("ddim", 1, 0.0)])
@pytest.mark.parametrize("residual", [True, False])
def test_oracle_chain_passes_every_target_and_lands_on_the_last(sampler, steps, noise, residual):
    diff = _bridge(k=4, noise=noise, residual=residual)
    n, dim = 8, 5
    targets = torch.randn(n, 5, dim)  # theta_0 then 4 targets
    cond = torch.arange(n, dtype=torch.float32).unsqueeze(-1)
    final, chain = diff.sample(_oracle_model(targets, diff), cond, dim, start=targets[0, 0], sampler=sampler,
                               sample_steps=steps, generator=torch.Generator().manual_seed(0), return_chain=True)
    visited = dict(chain)
    for i, end in enumerate(segment_ends(T, 4).tolist()):
        torch.testing.assert_close(visited[end], targets[:, i + 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(final, targets[:, -1], atol=1e-5, rtol=0)


def test_oracle_chain_has_the_bridge_marginal_midway():
    diff = _bridge(k=1, noise=0.7)
    n, dim = 40_000, 2
    targets = torch.stack([torch.zeros(n, dim), torch.full((n, dim), 3.0)], dim=1)  # theta_0 = 0, target = 3
    cond = torch.zeros(n, 1)
    model = lambda x, t, c: targets[:, 1] - x  # noqa: E731
    _, chain = diff.sample(model, cond, dim, start=torch.zeros(dim), generator=torch.Generator().manual_seed(3),
                           return_chain=True)
    x = dict(chain)[T // 2]
    lam = float(diff.position(torch.tensor([T // 2])))
    torch.testing.assert_close(x.mean(0), torch.full((dim,), 3.0 * (1 - lam)), atol=0.02, rtol=0)
    torch.testing.assert_close(x.var(0), torch.full((dim,), 0.49 * lam * (1 - lam)), atol=0.02, rtol=0)


@pytest.mark.parametrize("segment_draw", ["all", "one"])
def test_training_loss_is_zero_for_the_oracle_and_positive_otherwise(segment_draw):
    diff = _bridge(k=3, segment_draw=segment_draw)
    rows = diff.draw(6, 7, torch.Generator().manual_seed(0))["t"].shape[0]
    assert rows == (18 if segment_draw == "all" else 6)
    targets = torch.randn(6, 4, 7)
    cond = torch.arange(6, dtype=torch.float32).unsqueeze(-1)
    oracle = _oracle_model(targets, diff)
    assert float(diff.training_loss(oracle, targets, cond, torch.Generator().manual_seed(0))) < 1e-10
    zero = lambda x, t, c: torch.zeros_like(x)  # noqa: E731
    assert float(diff.training_loss(zero, targets, cond, torch.Generator().manual_seed(0))) > 1e-3


def test_checkpoint_indices_start_with_theta0_and_variants_are_selected_by_name():
    steps = list(range(0, 101, 10))
    assert _bridge(k=3).checkpoint_indices(steps) == [0, 3, 7, 10]
    process = lambda **keys: make_diffusion(DiffusionConfig(steps=T, bridge_noise=0.5, bridge_start_noise=0.0,  # noqa: E731
                                                            **keys))
    assert process(variant="local_consistency", segments=3).checkpoint_indices(steps) == [3, 7, 10]
    assert isinstance(process(variant="bridge", schedule="cosine", segments=2), BridgeDiffusion)
    with pytest.raises(Exception, match="diffusion.variant"):
        process(variant="flow")


def test_start_noise_gives_ddpm_fresh_starts_and_leaves_ddim_at_theta0():
    diff = _bridge(k=2, start_noise=0.5)
    targets = torch.randn(4, 3, 6)
    cond = torch.arange(4, dtype=torch.float32).unsqueeze(-1)
    model = _oracle_model(targets, diff)
    first = lambda sampler, seed: diff.sample(model, cond, 6, start=targets[0, 0], sampler=sampler,  # noqa: E731
                                              generator=torch.Generator().manual_seed(seed), return_chain=True)[1][0][1]
    a, b = first("ddpm", 0), first("ddpm", 1)
    assert not torch.allclose(a, b)  # the stochastic sampler starts fresh around theta_0
    assert torch.equal(first("ddim", 0), targets[0, 0].expand(4, 6))  # the deterministic one at theta_0
    assert float((a - targets[0, 0]).std()) == pytest.approx(0.5, rel=0.5)
