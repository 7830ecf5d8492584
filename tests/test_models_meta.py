"""Models (shapes, set invariance, normaliser) and the meta-training rules."""

import copy

import pytest
import torch

from ltdi_ray.config.method import DiffusionConfig
from ltdi_ray.diffusion import LocalConsistencyDiffusion, Schedule, make_diffusion
from ltdi_ray.generator.denoisers import PRESETS, ResMLPDenoiser
from ltdi_ray.generator.encoders import SetEncoder
from ltdi_ray.generator.network import GeneratorNet
from ltdi_ray.generator.normalizer import WeightNormalizer
from ltdi_ray.meta.reptile import apply_meta_gradient, reptile_meta_gradient
from ltdi_ray.meta.task_loss import task_loss

D, T = 12, 10


def _generator(seed=0):
    torch.manual_seed(seed)
    return GeneratorNet(SetEncoder(1, 1, PRESETS["tiny"].cond_dim, width=16), ResMLPDenoiser(D, T, PRESETS["tiny"]))


def _batch(b=4, k=2, shots=5):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(b, k, D, generator=g), torch.randn(b, shots, 1, generator=g), torch.randn(b, shots, 1, generator=g))


def test_denoiser_and_encoder_shapes_and_set_invariance():
    gen = _generator()
    targets, sx, sy = _batch()
    c = gen.cond(sx, sy)
    assert c.shape == (4, PRESETS["tiny"].cond_dim)
    perm = torch.randperm(5)
    torch.testing.assert_close(gen.cond(sx[:, perm], sy[:, perm]), c)
    out = gen.denoiser(torch.randn(4, D), torch.tensor([1, 3, 5, 10]), c)
    assert out.shape == (4, D) and torch.isfinite(out).all()


def test_fourier_set_encoder_features_invariance_and_checkpointed_frequencies():
    enc = SetEncoder(1, 1, 8, width=16, fourier=4, fourier_scale=2.0)
    x, y = torch.randn(3, 5, 1), torch.randn(3, 5, 1)
    feats = enc.features(x, y)
    assert feats.shape == (3, 5, 1 + 1 + 2 * 4 * 2)
    phase = x @ enc.freqs
    torch.testing.assert_close(feats[..., 2:6], phase.sin())
    torch.testing.assert_close(feats[..., 14:18], y * phase.cos())  # y times each wave: the moments of a fit
    perm = torch.randperm(5)
    torch.testing.assert_close(enc(x[:, perm], y[:, perm]), enc(x, y))
    assert "freqs" in enc.state_dict()  # the frequencies travel with the checkpoint
    other = SetEncoder(1, 1, 8, width=16, fourier=4, fourier_scale=2.0)
    torch.testing.assert_close(other.freqs, enc.freqs)  # and are the same for every build (seeded)
    assert SetEncoder(1, 1, 8, width=16).features(x, y).shape == (3, 5, 2)


def test_ridge_set_encoder_solves_the_least_squares_fit_of_the_support():
    enc = SetEncoder(1, 1, 8, width=16, fourier=16, fourier_scale=0.5, ridge=1e-3).double()
    x = torch.rand(3, 10, 1, dtype=torch.float64) * 10 - 5
    y = 2 * torch.sin(x - 0.3)
    w = enc.ridge_fit(x, y)
    assert w.shape == (3, 2 * 16)
    phase = x @ enc.freqs
    wave = torch.cat([phase.sin(), phase.cos()], dim=-1) / 16 ** 0.5
    primal = torch.linalg.solve(wave.transpose(1, 2) @ wave + 1e-3 * torch.eye(32, dtype=torch.float64),
                                wave.transpose(1, 2) @ y)  # the textbook (Phi^T Phi + lambda I)^-1 Phi^T y
    torch.testing.assert_close(w, primal.flatten(1))
    fitted = (wave @ w.unsqueeze(-1)).squeeze(-1)
    assert (fitted - y[..., 0]).abs().max() < 0.05  # a smooth y, small lambda: the fit passes through the support
    perm = torch.randperm(10)
    torch.testing.assert_close(enc(x[:, perm], y[:, perm]), enc(x, y))
    with pytest.raises(ValueError, match="needs fourier"):
        SetEncoder(1, 1, 8, width=16, ridge=1e-3)


def test_normalizer_round_trip_and_floor():
    mean, std = torch.randn(D), torch.rand(D)
    std[0] = 0.0
    norm = WeightNormalizer(mean, std, floor=1e-3)
    theta = torch.randn(3, D)
    torch.testing.assert_close(norm.denormalize(norm.normalize(theta)), theta)
    assert float(norm.std[0]) == pytest.approx(1e-3)


def test_single_level_training_reduces_the_loss():
    gen = _generator()
    diff = LocalConsistencyDiffusion(Schedule.make("linear", T), segments=2)
    targets, sx, sy = _batch(b=8)
    opt = torch.optim.Adam(gen.parameters(), lr=3e-3)
    fixed = torch.Generator().manual_seed(7)
    with torch.no_grad():
        before = float(task_loss(gen, diff, targets, sx, sy, draws=8, generator=fixed))
    for _ in range(150):  # single-level training: the same loss, minimised directly
        opt.zero_grad(set_to_none=True)
        task_loss(gen, diff, targets, sx, sy, draws=4).backward()
        opt.step()
    with torch.no_grad():
        after = float(task_loss(gen, diff, targets, sx, sy, draws=8, generator=torch.Generator().manual_seed(7)))
    assert after < 0.5 * before


@pytest.mark.parametrize("variant", ["local_consistency", "bridge"])
def test_reptile_meta_gradient_is_the_mean_displacement_of_per_task_sgd(variant):
    diff = make_diffusion(DiffusionConfig(variant=variant, steps=T, segments=2, bridge_noise=0.5, bridge_start_noise=0.0))
    targets, sx, sy = _batch(b=3, k=3 if variant == "bridge" else 2)
    gen = _generator()
    phi = [p.detach().clone() for p in gen.parameters()]
    torch.manual_seed(11)
    deltas, _ = reptile_meta_gradient(gen, diff, targets, sx, sy, inner_steps=2, inner_lr=0.01)
    assert all(torch.equal(p, p0) for p, p0 in zip(gen.parameters(), phi))  # left at phi
    copies = [copy.deepcopy(gen) for _ in range(3)]
    torch.manual_seed(11)  # the same noise draws, task by task, with plain SGD
    expected = [torch.zeros_like(p) for p in phi]
    for b, task in enumerate(copies):
        opt = torch.optim.SGD(task.parameters(), lr=0.01)
        for _ in range(2):
            opt.zero_grad()
            task_loss(task, diff, targets[b:b + 1], sx[b:b + 1], sy[b:b + 1]).backward()
            opt.step()
        for e, p0, p in zip(expected, phi, task.parameters()):
            e.add_(p0 - p.detach())
    for d, e in zip(deltas, expected):
        torch.testing.assert_close(d, e, atol=1e-6, rtol=1e-5)
    outer = torch.optim.SGD(gen.parameters(), lr=1.0)
    apply_meta_gradient(gen, outer, deltas, 3)
    for p, p0, e in zip(gen.parameters(), phi, expected):
        torch.testing.assert_close(p.detach(), p0 - e / 3)  # Reptile step zeta = 1: phi <- mean(phi_i)


def test_class_token_head_generator_is_equivariant_to_the_label_order():
    from ltdi_ray.generator.heads import ClassTokenDenoiser, PrototypeEncoder, head_flat, head_rows

    torch.manual_seed(0)
    ways, feat, shots = 5, 8, 3
    enc, den = PrototypeEncoder(feat, PRESETS["tiny"].cond_dim, 16), ClassTokenDenoiser(feat + 1, T, PRESETS["tiny"])
    den.eval()
    feats = torch.randn(2, ways * shots, feat)
    labels = torch.arange(ways).repeat_interleave(shots).expand(2, -1)
    x = torch.randn(2, ways * (feat + 1))
    t = torch.tensor([3, 7])
    out = den(x, t, enc(feats, labels, ways))
    assert out.shape == x.shape
    torch.testing.assert_close(head_flat(head_rows(x, ways)), x)
    perm = torch.randperm(ways)  # relabel: class perm[j] becomes j
    inv = torch.argsort(perm)
    out_p = den(head_flat(head_rows(x, ways)[:, perm]), t, enc(feats, inv[labels], ways))
    torch.testing.assert_close(head_rows(out_p, ways), head_rows(out, ways)[:, perm], atol=1e-5, rtol=1e-4)
    assert den(torch.randn(2, 10 * (feat + 1)), t, torch.randn(2, 10, PRESETS["tiny"].cond_dim)).shape == (2, 90)
