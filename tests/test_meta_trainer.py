"""The outer loop: deterministic global meta-batches and data-parallel equivalence (no Ray needed)."""

import threading

import pytest
import torch

from ltdi_ray.config import load_config
from ltdi_ray.config.method import DiffusionConfig
from ltdi_ray.diffusion import make_diffusion
from ltdi_ray.generator.build import build_diffusion
from ltdi_ray.generator.denoisers import PRESETS, ResMLPDenoiser
from ltdi_ray.generator.encoders import SetEncoder
from ltdi_ray.generator.network import GeneratorNet
from ltdi_ray.meta.trainer import MetaTrainer, TaskStore, shard_range

D, T, N = 12, 10, 40


def _store(rank=0, world=1):
    """Worker ``rank``'s shard of N random tasks."""
    g = torch.Generator().manual_seed(0)
    full = [torch.randn(N, 4, D, generator=g), torch.randn(N, 30, 1, generator=g),
            torch.randn(N, 30, 1, generator=g), torch.randint(0, 30, (N, 5), generator=g)]
    lo, hi = shard_range(N, rank, world)
    return TaskStore(*[a[lo:hi] for a in full], first=lo, total=N)


def _function_loss(weight):
    """A function-space term over a D-weight network (tanh(W x + b), W and b of 6 each)."""
    from ltdi_ray.base_nets.paramspec import ParamSpec
    from ltdi_ray.generator.normalizer import WeightNormalizer
    from ltdi_ray.meta.function_loss import FunctionSpaceLoss

    net = torch.nn.Sequential(torch.nn.Linear(1, D // 2), torch.nn.Tanh())
    return FunctionSpaceLoss(net, ParamSpec.from_module(net), WeightNormalizer(torch.zeros(D), torch.ones(D)), weight)


def _chain_loss(weight):
    """The chain's task loss over a D-weight network (1 -> 4 tanh -> 1 without an output bias), chains from 0."""
    from ltdi_ray.base_nets.paramspec import ParamSpec
    from ltdi_ray.generator.normalizer import WeightNormalizer
    from ltdi_ray.meta.chain_loss import ChainLoss

    net = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1, bias=False))
    start = lambda sx, sy: torch.zeros(sx.shape[0], D)  # noqa: E731
    return ChainLoss(net, ParamSpec.from_module(net), WeightNormalizer(torch.zeros(D), torch.ones(D)), weight,
                     start, lambda pred, y: (pred - y).square().mean(), sample_steps=1)


def _trainer(meta, rank=0, world=1, allreduce=None, variant="bridge", extra=()):
    torch.manual_seed(0)
    gen = GeneratorNet(SetEncoder(1, 1, PRESETS["tiny"].cond_dim, width=16), ResMLPDenoiser(D, T, PRESETS["tiny"]))
    cfg = load_config([f"train.meta={meta}", "train.meta_batch=6", "train.inner_steps=2", f"diffusion.steps={T}",
                       f"diffusion.variant={variant}", "diffusion.segments=3", *extra])
    store = _store(rank, world)
    if variant == "local_consistency":  # its targets are the k segment ends, without theta_0
        store.targets = store.targets[:, 1:]
    function_loss = _function_loss(cfg.train.function_loss) if cfg.train.function_loss else None
    chain_loss = _chain_loss(cfg.train.chain_loss) if cfg.train.chain_loss else None
    return MetaTrainer(gen, build_diffusion(cfg), store, cfg.train, rank, world, allreduce, function_loss=function_loss,
                       chain_loss=chain_loss)


class ThreadAllReduce:
    """An in-process sum over worker threads, standing in for torch.distributed's all-reduce."""

    def __init__(self, world):
        self.world, self.barrier, self.buf = world, threading.Barrier(world), {}

    def for_rank(self, rank):
        def allreduce(tensors):
            self.buf[rank] = [t.clone() for t in tensors]
            self.barrier.wait()
            total = [sum(self.buf[r][i] for r in range(self.world)) for i in range(len(tensors))]
            self.barrier.wait()
            for t, s in zip(tensors, total):
                t.copy_(s)
        return allreduce


def test_global_meta_batch_depends_only_on_seed_and_step():
    a, b = _trainer("reptile"), _trainer("reptile", rank=1, world=2)
    for step in (0, 5):
        ia, pa = a.batch(step)
        ib, pb = b.batch(step)
        assert (ia == ib).all() and (pa == pb).all()
    assert not (a.batch(0)[0] == a.batch(1)[0]).all()


@pytest.mark.parametrize("meta,variant,extra", [
    ("reptile", "bridge", ()), ("none", "bridge", ()), ("none", "local_consistency", ()),
    ("none", "bridge", ("diffusion.segment_draw=one", "train.resample_support=false")),
    ("none", "bridge", ("train.function_loss=0.5",)), ("none", "bridge", ("train.chain_loss=0.5",))])
def test_two_workers_on_their_shards_reproduce_one_worker(meta, variant, extra):
    single = _trainer(meta, variant=variant, extra=extra)
    for step in range(3):
        single.step(step)
    reduce = ThreadAllReduce(2)
    pair = [_trainer(meta, r, 2, reduce.for_rank(r), variant, extra) for r in range(2)]
    assert [len(tr.store) for tr in pair] == [N // 2, N // 2]

    def run(tr):
        for step in range(3):
            tr.step(step)

    threads = [threading.Thread(target=run, args=(tr,)) for tr in pair]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for p1, p2a, p2b in zip(single.gen.parameters(), pair[0].gen.parameters(), pair[1].gen.parameters()):
        torch.testing.assert_close(p2a, p2b, atol=0, rtol=0)  # workers agree exactly
        torch.testing.assert_close(p2a, p1, atol=1e-5, rtol=1e-4)  # and match one worker up to summation order


@pytest.mark.parametrize("meta", ["reptile", "none"])
def test_outer_steps_lower_the_loss(meta):
    tr = _trainer(meta)
    first = [tr.step(s) for s in range(5)]
    for s in range(5, 120):
        tr.step(s)
    last = [tr.step(s) for s in range(120, 125)]
    assert sum(last) < 0.6 * sum(first)


def test_cosine_schedule_is_a_function_of_the_step():
    torch.manual_seed(0)
    gen = GeneratorNet(SetEncoder(1, 1, PRESETS["tiny"].cond_dim, width=16), ResMLPDenoiser(D, T, PRESETS["tiny"]))
    cfg = load_config(["train.lr_schedule=cosine", "train.lr=0.002", "train.epochs=2", "train.steps_per_epoch=5"]).train
    trainer = MetaTrainer(gen, make_diffusion(DiffusionConfig(variant="bridge", steps=T, segments=3, bridge_noise=0.5, bridge_start_noise=0.0)), _store(), cfg)
    assert [round(trainer.lr_at(s), 6) for s in (0, 5, 10, 12)] == [0.002, 0.001, 0.0, 0.0]
    trainer.step(5)
    assert trainer.opt.param_groups[0]["lr"] == pytest.approx(0.001)


def test_reptile_chunks_change_memory_not_the_update():
    whole, chunked = _trainer("reptile"), _trainer("reptile", extra=("train.reptile_chunk=2",))
    for step in range(2):
        assert whole.step(step) == pytest.approx(chunked.step(step), rel=1e-5)
    for a, b in zip(whole.gen.parameters(), chunked.gen.parameters()):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)  # summation order only


def test_the_function_space_term_compares_network_outputs_and_adds_to_the_loss():
    fl = _function_loss(2.0)
    g = torch.Generator().manual_seed(1)
    pred, target, x = torch.randn(5, D, generator=g), torch.randn(5, D, generator=g), torch.randn(5, 7, 1, generator=g)
    assert fl(target, target, x) == 0
    by_hand = torch.stack([(fl.net[1](x[i] @ p[:6].view(6, 1).T + p[6:]) - fl.net[1](x[i] @ q[:6].view(6, 1).T + q[6:]))
                           for i, (p, q) in enumerate(zip(pred, target))])
    torch.testing.assert_close(fl(pred, target, x), 2.0 * by_hand.square().mean())
    with_term, without = _trainer("none", extra=("train.function_loss=0.5",)), _trainer("none", extra=("train.function_loss=0",))
    assert with_term.step(0) > without.step(0)  # the same draws, plus a non-negative term


def test_the_chain_loss_scores_the_sampled_network_on_the_pool_and_trains_the_chain():
    tr = _trainer("none", extra=("train.chain_loss=2.0",))
    cl, gen, diffusion = tr.chain_loss, tr.gen, tr.diffusion
    g = torch.Generator().manual_seed(3)
    sx, sy, px, py = (torch.randn(4, n, 1, generator=g) for n in (5, 5, 9, 9))
    value = cl(gen, diffusion, sx, sy, px, py)
    with torch.no_grad():  # the same chain as the generator samples, then the MSE of that network by hand
        end = diffusion.sample(gen.denoiser, gen.cond(sx, sy), D, torch.zeros(4, D), sampler="ddim", sample_steps=1)
    by_hand = torch.stack([(torch.tanh(px[i] @ w[:4].view(4, 1).T + w[4:8]) @ w[8:].view(4, 1) - py[i]).square().mean()
                           for i, w in enumerate(end)])
    torch.testing.assert_close(value, 2.0 * by_hand.mean())
    grads = torch.autograd.grad(value, list(gen.denoiser.parameters()), allow_unused=True)
    assert any(gr is not None and gr.abs().sum() > 0 for gr in grads)  # the loss reaches the denoiser through the chain
    without = _trainer("none", extra=("train.chain_loss=0",))
    assert tr.step(0) > without.step(0)  # the same draws, plus a positive term
