"""Reference tests of the bridge variant (DESIGN 2.3, second variant)."""

import pytest
import torch

from ltdi_ray.diffusion import BridgeDiffusion, Schedule, make_diffusion, segment_ends

T = 20


def _bridge(k=3, noise=0.5, residual=True, schedule="linear"):
    return BridgeDiffusion(Schedule.make(schedule, T), k, noise, residual)


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


def test_training_loss_is_zero_for_the_oracle_and_positive_otherwise():
    diff = _bridge(k=3)
    targets = torch.randn(6, 4, 7)
    cond = torch.arange(6, dtype=torch.float32).unsqueeze(-1)
    oracle = _oracle_model(targets, diff)
    assert float(diff.training_loss(oracle, targets, cond, torch.Generator().manual_seed(0))) < 1e-10
    zero = lambda x, t, c: torch.zeros_like(x)  # noqa: E731
    assert float(diff.training_loss(zero, targets, cond, torch.Generator().manual_seed(0))) > 1e-3


def test_checkpoint_indices_start_with_theta0_and_variants_are_selected_by_name():
    steps = list(range(0, 101, 10))
    assert _bridge(k=3).checkpoint_indices(steps) == [0, 3, 7, 10]
    assert make_diffusion("local_consistency", "linear", T, 3).checkpoint_indices(steps) == [3, 7, 10]
    assert isinstance(make_diffusion("bridge", "cosine", T, 2), BridgeDiffusion)
    with pytest.raises(ValueError, match="unknown diffusion variant"):
        make_diffusion("flow", "linear", T, 1)
