import numpy as np
import pytest
import torch

from ltdi_ray.base_nets import ParamSpec
from ltdi_ray.config import load_config
from ltdi_ray.config.schema import TrajectoryConfig
from ltdi_ray.pipelines.collect import make_batcher
from ltdi_ray.tasks import make_family
from ltdi_ray.trajectories.inner import make_functional, run_batched, run_per_task
from ltdi_ray.trajectories.theta0 import initial_theta


@pytest.mark.parametrize("opt", [
    TrajectoryConfig("adam", lr=0.01, steps=30, save_every=10),
    TrajectoryConfig("sgd", lr=0.02, steps=30, save_every=5),
    TrajectoryConfig("adam", lr=0.01, steps=20, save_every=10, sam_rho=0.05),
], ids=["adam", "sgd", "adam-sam"])
def test_batched_matches_per_task_reference(opt):
    fam = make_family(load_config([]).task)
    net = fam.build_net()
    spec = ParamSpec.from_module(net)
    loss = make_functional(net, spec, fam.loss)
    ep = fam.sample_many("train", range(6))
    x, y = torch.from_numpy(ep["pool_x"]), torch.from_numpy(ep["pool_y"])
    theta0 = initial_theta(fam, 0).expand(6, -1)
    batched = run_batched(loss, theta0, x, y, opt)
    assert batched.shape == (6, opt.num_checkpoints, spec.dim)
    for i in range(6):
        ref = run_per_task(loss, theta0[i], x[i], y[i], opt)
        torch.testing.assert_close(batched[i], ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(batched[:, 0], theta0)


def test_batched_matches_reference_for_the_conv_net(omniglot_root):
    # float64: batched (grouped) and single convolutions sum in different orders, and Adam's
    # m / sqrt(v) turns float32 round-off in near-zero gradients into 1e-4 steps.
    fam = make_family(load_config(["task=omniglot", f"task.root={omniglot_root}", "task.channels=8"]).task)
    net = fam.build_net().double()
    spec = ParamSpec.from_module(net)
    loss = make_functional(net, spec, fam.loss)
    ep = fam.sample_many("train", range(2))
    x, y = fam.to_torch(ep["pool_x"]).double(), fam.targets_to_torch(ep["pool_y"])
    opt = TrajectoryConfig("adam", lr=0.01, steps=6, save_every=3)
    theta0 = initial_theta(fam, 0).double().expand(2, -1)
    batched = run_batched(loss, theta0, x, y, opt)
    for i in range(2):
        torch.testing.assert_close(batched[i], run_per_task(loss, theta0[i], x[i], y[i], opt), atol=1e-5, rtol=1e-5)


def test_batcher_rows_shared_and_per_task_theta0():
    cfg = load_config(["trajectory.steps=40", "trajectory.save_every=10", "trajectory.theta0=shared"])
    rows = make_batcher(cfg)(np.array([3, 1, 2]))
    assert rows["checkpoints"].shape == (3, 5, 1761) and rows["steps"][0].tolist() == [0, 10, 20, 30, 40]
    assert np.array_equal(rows["checkpoints"][0, 0], rows["checkpoints"][2, 0])  # shared theta_0
    assert (rows["pool_loss"][:, -1] < rows["pool_loss"][:, 0]).all()  # the inner loop learns
    assert all(np.array_equal(v, make_batcher(cfg)(np.array([3, 1, 2]))[k]) for k, v in rows.items())
    alone = make_batcher(cfg)(np.array([2]))  # another batch: the same task up to float32 round-off
    np.testing.assert_allclose(alone["checkpoints"][0], rows["checkpoints"][2], atol=1e-5)
    per_task = make_batcher(load_config(["trajectory.steps=40", "trajectory.theta0=per_task"]))(np.array([1, 2]))
    assert not np.array_equal(per_task["checkpoints"][0, 0], per_task["checkpoints"][1, 0])


def test_a_call_runs_in_chunks_that_fit_chunk_mb_and_gives_the_rows_of_one_pass():
    keys = ["trajectory.steps=20", "trajectory.save_every=5", "trajectory.theta0=shared"]
    whole = make_batcher(load_config(keys))(np.arange(7))
    chunked = make_batcher(load_config([*keys, "collect.chunk_mb=1"]))
    per_task = chunked.task_bytes(0)
    assert chunked.chunk_tasks() == 2**20 // per_task < 7  # the budget over the measured working memory
    sizes = [len(part["task_id"]) for part in chunked.chunks(np.arange(7))]
    assert sum(sizes) == 7 and max(sizes) == chunked.chunk_tasks() and len(sizes) > 1
    rows = chunked(np.arange(7))
    assert rows["task_id"].tolist() == list(range(7))
    for key, value in whole.items():
        np.testing.assert_allclose(rows[key], value, atol=1e-5, err_msg=key)


def test_the_working_memory_estimate_covers_what_the_inner_loop_allocates():
    # torch's CPU allocator does not report peaks: measure the saved activations the way autograd keeps them,
    # then check the estimate is at least the tensors one task's step really holds (weights, grads, Adam state)
    cfg = load_config(["trajectory.steps=20", "trajectory.save_every=5", "trajectory.theta0=shared"])
    b = make_batcher(cfg)
    d, c = b.theta0.shared.numel(), len(cfg.trajectory.checkpoint_steps)
    pool_floats = np.prod(b.family.sample(cfg.collect.split, 0)["pool_x"].shape)
    hidden_floats = pool_floats * 40 * 2  # two hidden layers of 40 units, each kept for the backward pass
    assert b.task_bytes(0) >= 4 * (d * (c + 6) + 2 * hidden_floats)


def test_a_reptile_batcher_starts_every_task_at_the_start_it_is_given():
    cfg = load_config(["trajectory.steps=10", "trajectory.save_every=5", "reptile_start.meta_steps=3", "reptile_start.tasks=16"])
    assert cfg.trajectory.theta0 == "reptile"
    start = torch.randn(1761)
    rows = make_batcher(cfg, shared=start)(np.array([0, 5]))
    assert (rows["checkpoints"][:, 0] == start.numpy()).all()
    trained = make_batcher(cfg)  # no start given: meta-trained from the base init (3 Reptile steps here)
    assert not torch.equal(trained.theta0.shared, initial_theta(trained.family, 0))


def test_diverging_inner_loop_is_reported_with_task_ids():
    from ltdi_ray.errors import DataError

    cfg = load_config(["trajectory.optimizer=sgd", "trajectory.lr=1e6", "trajectory.steps=10", "trajectory.save_every=5",
                       "trajectory.theta0=shared"])
    with pytest.raises(DataError, match="diverged .* lower trajectory.lr"):
        make_batcher(cfg)(np.arange(4))
