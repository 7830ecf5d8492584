import pytest
import torch
from torch.func import grad, grad_and_value, vmap

from ltdi_ray.config import load_config
from ltdi_ray.config.method import MetaInitConfig
from ltdi_ray.config.schema import TrajectoryConfig
from ltdi_ray.errors import ConfigError
from ltdi_ray.meta.meta_init import adapt, meta_gradient, train_meta_init
from ltdi_ray.pipelines.collect import make_batcher
from ltdi_ray.trajectories.inner import run_per_task


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny per-op tensors: two threads measured up to 10x slower than one when another process
    shares the two cores (results are identical either way)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def batcher():
    return make_batcher(load_config(["trajectory.theta0=shared"]))  # the baselines start at the base init


def episodes(batcher, split, ids, queries=None):
    """(sx, sy, qx, qy): the K support points of each task's pool and (the first ``queries``) query points."""
    ep = batcher.family.sample_many(split, list(ids))
    px, py = torch.from_numpy(ep["pool_x"]), torch.from_numpy(ep["pool_y"])
    idx = torch.from_numpy(ep["support_idx"]).long()[..., None]
    qx, qy = torch.from_numpy(ep["query_x"]), torch.from_numpy(ep["query_y"])
    return px.gather(1, idx), py.gather(1, idx), qx[:, :queries], qy[:, :queries]


def close(a, b, rel=1e-5):
    return float((a - b).norm()) <= rel * float(b.norm())


def reference_maml(loss, theta, batch, steps, lr, first_order):
    """Plain autograd, one task at a time: the mean over tasks of d L_q(adapted) / d theta."""
    sx, sy, qx, qy = batch
    grads = []
    for i in range(sx.shape[0]):
        th0 = theta.detach().clone().requires_grad_(True)
        th = th0
        for _ in range(steps):
            (g,) = torch.autograd.grad(loss(th, sx[i], sy[i]), th, create_graph=not first_order)
            th = th - lr * g
        if first_order:  # dL_q/dtheta with the inner gradients constant = dL_q/d adapted
            th = th.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(loss(th, qx[i], qy[i]), th)
        else:
            (g,) = torch.autograd.grad(loss(th, qx[i], qy[i]), th0)
        grads.append(g)
    return torch.stack(grads).mean(0)


def test_maml_and_fomaml_gradients_match_plain_autograd(batcher):
    loss, theta = batcher.loss, batcher.theta0.shared
    batch = episodes(batcher, "train", range(3), queries=10)
    steps, lr = 3, 0.05
    maml, maml_loss = meta_gradient(loss, theta, batch, "maml", MetaInitConfig(inner_steps=steps, inner_lr=lr))
    fo, fo_loss = meta_gradient(loss, theta, batch, "fomaml", MetaInitConfig(inner_steps=steps, inner_lr=lr))
    assert maml.shape == fo.shape == theta.shape
    assert close(maml, reference_maml(loss, theta, batch, steps, lr, first_order=False))
    assert close(fo, reference_maml(loss, theta, batch, steps, lr, first_order=True))
    # the same query loss (same adapted weights), but the second-order terms are far from zero
    torch.testing.assert_close(maml_loss, fo_loss, rtol=1e-5, atol=0)
    assert float((maml - fo).norm()) > 0.05 * float(maml.norm())

    # and torch.func's composition (grad of vmap over tasks of an unrolled grad loop) agrees
    def outer(th):
        def one(sx, sy, qx, qy):
            adapted = th
            for _ in range(steps):
                adapted = adapted - lr * grad(loss)(adapted, sx, sy)
            return loss(adapted, qx, qy)
        return vmap(one)(*batch).mean()

    func_grad, func_loss = grad_and_value(outer)(theta)
    assert close(maml, func_grad)
    torch.testing.assert_close(maml_loss, func_loss, rtol=1e-5, atol=0)


def test_reptile_direction_is_theta_minus_mean_adapted(batcher):
    loss, theta = batcher.loss, batcher.theta0.shared
    sx, sy, qx, qy = episodes(batcher, "train", range(3), queries=10)
    cfg = MetaInitConfig(inner_steps=4, inner_lr=0.02)
    g, _ = meta_gradient(loss, theta, (sx, sy, qx, qy), "reptile", cfg)
    x, y = torch.cat([sx, qx], 1), torch.cat([sy, qy], 1)
    opt = TrajectoryConfig(optimizer="sgd", lr=cfg.inner_lr, steps=cfg.inner_steps, save_every=cfg.inner_steps)
    adapted = torch.stack([run_per_task(loss, theta, x[i], y[i], opt)[-1] for i in range(3)])
    torch.testing.assert_close(g, theta - adapted.mean(0), rtol=1e-5, atol=1e-7)


def test_adapt_zero_steps_and_sgd_matches_a_manual_loop(batcher):
    loss, theta = batcher.loss, batcher.theta0.shared
    sx, sy, _, _ = episodes(batcher, "test", range(4))
    start = adapt(loss, theta, sx, sy, steps=0, lr=0.01)
    assert start.shape == (4, theta.numel()) and torch.equal(start, theta.expand(4, -1))
    per_task = theta + 0.01 * torch.arange(4.0)[:, None]  # (B, D) starts are used row by row
    assert torch.equal(adapt(loss, per_task, sx, sy, steps=0, lr=0.01), per_task)

    out = adapt(loss, per_task, sx, sy, steps=7, lr=0.02)
    for i in range(4):
        th = per_task[i].clone().requires_grad_(True)
        for _ in range(7):
            (g,) = torch.autograd.grad(loss(th, sx[i], sy[i]), th)
            th = (th - 0.02 * g).detach().requires_grad_(True)
        torch.testing.assert_close(out[i], th.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.equal(adapt(loss, theta, sx, sy, 7, 0.02, optimizer="adam"), out)


@pytest.mark.parametrize("method", ["maml", "fomaml", "reptile"])
def test_training_is_deterministic(batcher, method):
    cfg = MetaInitConfig(meta_steps=4, inner_steps=2, outer_lr=0.01)
    sample = lambda step: episodes(batcher, "train", range(5 * step, 5 * step + 5), queries=10)  # noqa: E731
    theta_a, hist_a = train_meta_init(batcher.loss, batcher.theta0.shared, sample, method, cfg)
    theta_b, hist_b = train_meta_init(batcher.loss, batcher.theta0.shared, sample, method, cfg)
    assert torch.equal(theta_a, theta_b) and hist_a == hist_b
    assert len(hist_a) == 4 and all(isinstance(v, float) for v in hist_a)
    assert not torch.equal(theta_a, batcher.theta0.shared)


@pytest.fixture(scope="module")
def held_out(batcher):
    """200 test-split tasks and the query MSE of theta_0 after 5 SGD steps on each support set."""
    sx, sy, qx, qy = episodes(batcher, "test", range(200))

    def score(theta):
        adapted = adapt(batcher.loss, theta, sx, sy, steps=5, lr=0.01)
        with torch.no_grad():
            return float(vmap(batcher.loss)(adapted, qx, qy).mean())

    return score, score(batcher.theta0.shared)


@pytest.mark.parametrize("method", ["maml", "fomaml", "reptile"])
def test_meta_training_beats_the_shared_init_after_adaptation(batcher, held_out, method):
    # measured: theta_0 4.30; after 150 steps maml 1.71, fomaml 1.20, reptile 1.83
    score, baseline = held_out
    cfg = MetaInitConfig(meta_steps=150, meta_batch=10, inner_steps=5, inner_lr=0.01, outer_lr=0.02)
    sample = lambda step: episodes(batcher, "train", range(10 * step, 10 * step + 10), queries=10)  # noqa: E731
    theta, history = train_meta_init(batcher.loss, batcher.theta0.shared, sample, method, cfg)
    assert len(history) == 150
    assert sum(history[-20:]) < 0.9 * sum(history[:20])  # the learning curve goes down
    assert score(theta) < 0.7 * baseline


def test_an_unknown_method_and_bad_settings_are_refused(batcher):
    with pytest.raises(ValueError, match="method"):
        train_meta_init(batcher.loss, batcher.theta0.shared, lambda step: None, "anil", MetaInitConfig())
    with pytest.raises(ConfigError, match="'meta_init.inner_lr'"):
        MetaInitConfig(inner_lr=0)
