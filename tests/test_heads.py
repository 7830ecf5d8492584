"""Omniglot head generation, in-process: the backbone, class-balanced supports, label-order equivariance,
any number of ways, ProtoNet as a head, and the input checks of generate."""

import numpy as np
import pytest
import torch

from ltdi_ray.base_nets import ParamSpec
from ltdi_ray.config import load_config
from ltdi_ray.errors import DataError
from ltdi_ray.generator.api import WeightGenerator
from ltdi_ray.generator.build import DataFacts, build_model, make_normalizer
from ltdi_ray.generator.heads import head_rows, prototype_head
from ltdi_ray.tasks import make_family
from ltdi_ray.tasks.episodes import draw_picks, support_of
from ltdi_ray.tasks.omniglot_backbone import character_classes, pretrain_backbone
from ltdi_ray.trajectories.theta0 import initial_theta


def head_generator(root, *extra) -> WeightGenerator:
    """An untrained tiny head generator (random weights, random non-trivial statistics): equivariance and
    shapes are properties of the architecture, not of training."""
    cfg = load_config(["task=omniglot", f"task.root={root}", "task.generate=head", "task.backbone=random",
                       "task.channels=8", "model.preset=tiny", "diffusion.segments=2", *extra])
    family = make_family(cfg.task)
    spec = ParamSpec.from_module(family.build_net())
    facts = DataFacts(spec.dim, list(range(0, 101, 10)))
    torch.manual_seed(0)
    model = build_model(cfg, family, facts)
    norm = make_normalizer(family, torch.randn(spec.dim), torch.rand(spec.dim) + 0.5)
    return WeightGenerator(cfg, spec, facts, model, norm, initial_theta(family, 0))


def test_generated_rows_follow_the_labels(omniglot_root):
    gen = head_generator(omniglot_root, "task.shots=2")
    ep = gen.family.sample_many("test", range(3))
    sx, sy = support_of(ep, gen.family, raw=True)  # (3, 10, 28, 28), labels 0..4 twice each
    perm = torch.tensor([3, 0, 4, 1, 2])  # class c is called perm[c] now
    theta = gen.generate_batch(sx, sy, seed=0)
    relabelled = gen.generate_batch(sx, perm[sy], seed=0)
    rows, new_rows = head_rows(theta, 5), head_rows(relabelled, 5)
    torch.testing.assert_close(new_rows[:, perm], rows, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(rows[:, 0], rows[:, 1])  # rows do differ by class


def test_heads_for_other_numbers_of_ways(omniglot_root):
    gen = head_generator(omniglot_root)
    family10 = make_family(load_config(["task=omniglot", f"task.root={omniglot_root}", "task.ways=10",
                                        "task.backbone=random", "task.generate=head", "task.channels=8"]).task)
    ep = family10.sample_many("test", range(4))
    sx, sy = support_of(ep, family10, raw=True)
    theta = gen.generate_batch(sx, sy, num_samples=2, seed=0)
    assert theta.shape == (4, 10 * (8 + 1))
    net = gen.to_module(theta[0])
    assert net(sx[0].unsqueeze(1)).shape == (10, 10)  # a 10-way classifier on images
    acc = gen.query_metric(theta, ep)
    assert acc.shape == (4,) and ((acc >= 0) & (acc <= 1)).all()


def test_generate_rejects_bad_labels(omniglot_root):
    gen = head_generator(omniglot_root, "task.shots=2")
    sx, sy = support_of(gen.family.sample_many("test", range(2)), gen.family, raw=True)
    with pytest.raises(DataError, match="task 1 has no example of class 4"):
        gen.generate_batch(sx, torch.stack([sy[0], sy[1].clamp_max(3)]))
    with pytest.raises(DataError, match="class labels 0..N-1"):
        gen.generate_batch(sx, sy - 1)
    with pytest.raises(DataError, match="support_y must hold integer class labels, got torch.float32"):
        gen.generate_batch(sx, sy.float())
    with pytest.raises(DataError, match=r"support_x must have shape \(tasks, shots, 28, 28\)"):
        gen.generate_batch(sx.unsqueeze(2), sy)


def test_full_mode_generator_refuses_another_number_of_ways(omniglot_root):
    cfg = load_config(["task=omniglot", f"task.root={omniglot_root}", "task.channels=4", "task.depth=2",
                       "model.preset=tiny"])
    family = make_family(cfg.task)
    spec = ParamSpec.from_module(family.build_net())
    model = build_model(cfg, family, DataFacts(spec.dim, [0, 50, 100]))
    gen = WeightGenerator(cfg, spec, DataFacts(spec.dim, [0, 50, 100]), model,
                          make_normalizer(family, torch.zeros(spec.dim), torch.ones(spec.dim)), initial_theta(family, 0))
    sx, sy = support_of(family.sample_many("test", range(2)), family, raw=True)
    assert gen.generate_batch(sx, sy, seed=0).shape == (2, spec.dim)
    assert gen.to_module(gen.generate_batch(sx, sy)[0])(sx[0].unsqueeze(1)).shape == (5, 5)
    with pytest.raises(DataError, match="makes 5-way networks"):
        gen.generate_batch(torch.cat([sx, sx[:, :1]], 1), torch.cat([sy, torch.full((2, 1), 5)], 1))


def test_protonet_head_is_the_nearest_class_mean():
    torch.manual_seed(0)
    feats, labels = torch.randn(2, 15, 6), torch.arange(5).repeat(3).expand(2, -1)
    query = torch.randn(2, 40, 6)
    rows = head_rows(prototype_head(feats, labels, 5), 5)  # (2, 5, 7)
    logits = query @ rows[..., :-1].transpose(1, 2) + rows[..., -1].unsqueeze(1)
    protos = torch.stack([feats[:, labels[0] == c].mean(1) for c in range(5)], 1)
    assert torch.equal(logits.argmax(-1), torch.cdist(query, protos).argmin(-1))


def test_draw_picks_is_class_balanced_and_matches_the_plain_draw():
    picks = draw_picks(np.random.default_rng(0), 7, 75, 3, classes=5)  # 5 blocks of 15
    assert picks.shape == (7, 5, 3)
    assert ((picks // 15) == np.arange(5)[None, :, None]).all()
    assert all(len(set(row.ravel())) == 15 for row in picks)
    plain = np.argsort(np.random.default_rng(1).random((4, 20)), axis=1)[:, :6]
    assert np.array_equal(draw_picks(np.random.default_rng(1), 4, 20, 6)[:, 0], plain)


def test_backbone_pretraining_learns_and_is_deterministic():
    rng = np.random.default_rng(0)
    shapes = rng.random((6, 1, 12, 12)) < 0.3  # six random "characters", 20 noisy drawings of each
    images = (shapes ^ (rng.random((6, 20, 12, 12)) < 0.05)).astype(np.uint8) * 255
    x, y = character_classes(images, rotate=True)
    assert x.shape == (6 * 4 * 20, 1, 12, 12) and int(y.max()) == 23
    task = load_config(["task=omniglot", "task.root=/unused", "task.channels=8", "task.depth=2", "task.image_size=12",
                        "task.pretrain.epochs=8", "task.pretrain.lr=3e-3", "task.pretrain.batch_size=32",
                        "task.pretrain.seed=1"]).task
    net, history = pretrain_backbone(images, task)
    again, _ = pretrain_backbone(images, task)
    assert history[-1] < 0.5 * history[0]
    for a, b in zip(net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_prototype_start_runs_the_trajectory_from_each_tasks_protonet_head(omniglot_root):
    from ltdi_ray.errors import ConfigError
    from ltdi_ray.pipelines.collect import make_batcher

    with pytest.raises(ConfigError, match="'trajectory.theta0': prototype needs a start computed from the support"):
        load_config(["trajectory.theta0=prototype"])
    with pytest.raises(ConfigError, match="'trajectory.theta0': prototype needs"):
        load_config(["task=omniglot", f"task.root={omniglot_root}", "trajectory.theta0=prototype"])  # full networks

    cfg = load_config(["task=omniglot", f"task.root={omniglot_root}", "task.generate=head", "task.backbone=random",
                       "task.channels=8", "trajectory.theta0=prototype", "trajectory.steps=4", "trajectory.save_every=2"])
    batcher = make_batcher(cfg, "cpu")
    rows = batcher(np.arange(3))
    family = batcher.family
    sx, sy = support_of({k: rows[k] for k in ("pool_x", "pool_y", "support_idx")}, family)
    torch.testing.assert_close(torch.from_numpy(rows["checkpoints"][:, 0]), prototype_head(sx, sy, 5))
    assert rows["query_metric"][:, -1].mean() >= 0.2
