"""The outer loop: deterministic global meta-batches and data-parallel equivalence (no Ray needed)."""

import threading

import pytest
import torch

from ltdi_ray.config import load_config
from ltdi_ray.diffusion import make_diffusion
from ltdi_ray.meta import Generator, MetaTrainer, TaskStore
from ltdi_ray.models import PRESETS, ResMLPDenoiser, SetEncoder

D, T, N = 12, 10, 40


def _store():
    g = torch.Generator().manual_seed(0)
    return TaskStore(torch.randn(N, 4, D, generator=g), torch.randn(N, 30, 1, generator=g),
                     torch.randn(N, 30, 1, generator=g), torch.zeros(N, 5, dtype=torch.long))


def _trainer(meta, rank=0, world=1, allreduce=None):
    torch.manual_seed(0)
    gen = Generator(SetEncoder(1, 1, PRESETS["tiny"].cond_dim, width=16), ResMLPDenoiser(D, T, PRESETS["tiny"]))
    cfg = load_config([f"train.meta={meta}", "train.meta_batch=6", "train.inner_steps=2"]).train
    return MetaTrainer(gen, make_diffusion("bridge", "linear", T, 3), _store(), cfg, rank, world, allreduce)


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


def test_two_reptile_workers_reproduce_one_worker():
    single = _trainer("reptile")
    for step in range(3):
        single.step(step)
    reduce = ThreadAllReduce(2)
    pair = [_trainer("reptile", r, 2, reduce.for_rank(r)) for r in range(2)]

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
