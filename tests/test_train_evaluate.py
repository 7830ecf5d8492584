"""train -> load_generator -> evaluate on a real local Ray, locally and on S3 (moto server)."""

import json

import numpy as np
import pytest
import torch

import ltdi_ray
from ltdi_ray.config import load_config
from ltdi_ray.errors import DataError
from ltdi_ray.generator.build import support_of
from ltdi_ray.generator.checkpoint import META, read_meta, read_train_state
from ltdi_ray.pipelines.collect import run_collect
from ltdi_ray.pipelines.evaluate import run_evaluate
from ltdi_ray.pipelines.plot import run_plot
from ltdi_ray.pipelines.train import run_train
from ltdi_ray.storage.fs import Location
from ltdi_ray.trajectories import evaluate

SMOKE = ["experiment=smoke", "collect.num_tasks=32", "collect.batch_size=16", "collect.num_actors=1"]


def config(uri, *extra, endpoint=None):
    return load_config([*SMOKE, f"storage.uri={uri}", *extra] + ([f"storage.endpoint_url={endpoint}"] if endpoint else []))


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory):
    cfg = config(tmp_path_factory.mktemp("run"))
    run_collect(cfg)
    return cfg, run_train(cfg)


def test_train_publishes_a_complete_tensor_only_checkpoint(trained):
    cfg, summary = trained
    assert summary["epochs"] == 2 and summary["workers"] == 1 and np.isfinite(summary["val_metric"])
    loc = Location.parse(summary["generator_uri"])
    assert sorted(loc.list()) == ["generator.json", "model.safetensors", "stats.safetensors", "train_state.pt"]
    meta = json.loads(loc.read_bytes(META))
    assert meta["param_spec"]["dim"] == 1761 and meta["target_indices"] == [0, 1, 3, 4]  # bridge k=3 over 0,5,..,20
    assert meta["config"]["diffusion"]["segments"] == 3 and meta["num_train_tasks"] == 32
    state = read_train_state(loc)  # loads with weights_only=True
    assert state["epoch"] == 1 and "state" in state["optimizer"]



def test_plot_draws_the_run_from_the_generators_history_and_chain(trained):
    cfg, summary = trained
    meta = read_meta(Location.parse(summary["generator_uri"]))
    assert [h["epoch"] for h in meta["history"]] == [0, 1] and meta["history"][-1]["val_metric"] == summary["val_metric"]
    out = run_plot(config(cfg.storage.uri, "plot.tasks=3"))
    names = sorted(p.rsplit("/", 1)[-1] for p in out["plots"])
    assert names == ["predictions.png", "training_curves.png", "weight_space.png"]
    assert all(Location.parse(out["uri"]).read_bytes(n)[:4] == b"\x89PNG" for n in names)
    gen = ltdi_ray.load_generator(summary["generator_uri"])
    sx, sy = support_of(gen.family.sample_many("test", range(3)), gen.family, raw=True)
    chain = gen.generate_chain(sx, sy, seed=0)  # what the weight-space plot draws
    assert chain[0][0] == cfg.diffusion.steps and chain[-1][0] == 0
    assert torch.allclose(chain[0][1], gen.theta0.expand(3, -1), atol=1e-5)
    assert torch.allclose(chain[-1][1], gen.generate_batch(sx, sy, seed=0))

def test_generate_returns_a_ready_module_and_num_samples_keeps_the_best_support_fit(trained):
    cfg, summary = trained
    gen = ltdi_ray.load_generator(summary["generator_uri"])
    ep = gen.family.sample_many("test", range(5))
    sx, sy = support_of(ep, gen.family)
    net = gen.generate(sx[0], sy[0], seed=1)
    assert isinstance(net, torch.nn.Module) and net(torch.zeros(7, 1)).shape == (7, 1)
    n = 4
    best = gen.generate_batch(sx, sy, num_samples=n, seed=5)
    # the same candidates by hand: every task n times, candidate 0 from theta_0, the rest around it
    rng = torch.Generator().manual_seed(5)
    cond = gen.model.cond(sx, sy).repeat_interleave(n, dim=0)
    extra = cfg.diffusion.sample_start_noise * torch.randn(5 * n, gen.spec.dim, generator=rng)
    extra[::n] = 0
    with torch.no_grad():
        z = gen.diffusion.sample(gen.model.denoiser, cond, gen.spec.dim, start=gen.norm.normalize(gen.theta0) + extra,
                                 sampler="ddim", sample_steps=1, generator=rng)
    cands = gen.norm.denormalize(z).view(5, n, -1)
    pick = evaluate(gen.loss, cands, sx, sy).argmin(1)
    torch.testing.assert_close(best, cands[torch.arange(5), pick])
    torch.testing.assert_close(cands[:, 0], gen.generate_batch(sx, sy, seed=5))  # candidate 0 = the single sample
    assert not torch.equal(cands[:, 0], cands[:, 1])


@pytest.mark.parametrize("sx, sy, needle", [
    (torch.zeros(2, 5), torch.zeros(2, 5, 1), "support_x must have shape (tasks, shots, 1)"),
    (torch.zeros(2, 5, 1), torch.zeros(2, 4, 1), "disagree on (tasks, shots)"),
    (torch.zeros(2, 5, 1, dtype=torch.long), torch.zeros(2, 5, 1), "support_x must be a floating-point tensor"),
    (torch.full((2, 5, 1), float("nan")), torch.zeros(2, 5, 1), "support_x contains NaN or Inf"),
])
def test_generate_rejects_bad_supports_with_one_line(trained, sx, sy, needle):
    gen = ltdi_ray.load_generator(trained[1]["generator_uri"])
    with pytest.raises(DataError) as err:
        gen.generate_batch(sx, sy)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_rerunning_train_resumes_the_finished_run_and_more_epochs_continue_it(trained, caplog):
    cfg, first = trained
    with caplog.at_level("INFO", logger="ltdi_ray"):
        again = run_train(cfg)
    assert again["uri"] == first["uri"] and again["epochs"] == 2
    assert "already finished" in caplog.text  # no Train run started, no shard read
    longer = run_train(config(cfg.storage.uri, "train.epochs=3"))
    assert longer["uri"] != first["uri"]  # another training config: another run, not a silent mix
    fresh = run_train(config(cfg.storage.uri, "resume=false"))  # the first run's config, started over beside it
    assert fresh["uri"].startswith(first["uri"] + "-") and fresh["epochs"] == 2
    assert read_meta(Location.parse(fresh["generator_uri"]))["metrics"]["start_epoch"] == 0


def test_evaluate_scores_every_method_on_the_same_tasks_and_saves_results(trained, capsys):
    cfg, _ = trained
    summary = run_evaluate(cfg)
    methods = summary["methods"]
    assert list(methods) == [m for m in cfg.evaluate.methods if m != "protonet"]  # protonet: Omniglot heads only
    assert all(np.isfinite(m["mean"]) and m["ci95"] >= 0 and m["ms_per_task"] > 0 for m in methods.values())
    record = json.loads(open(summary["uri"]).read())
    assert record["tasks"] == 16 and record["metric"] == "mse" and set(record["settings"]) >= {"maml", "finetune"}
    assert record["settings"]["vanilla"]["diffusion"]["segments"] == 1
    assert record["settings"]["single_level"]["train"]["meta"] == "none"
    assert "method" in capsys.readouterr().out


def test_train_and_load_on_s3(ray_session, bucket, s3_endpoint):
    cfg = config(f"s3://{bucket}/run", "train.epochs=1", endpoint=s3_endpoint)
    run_collect(cfg)
    summary = run_train(cfg)
    assert summary["generator_uri"] == f"s3://{bucket}/run/generator" and summary["uri"].startswith(f"s3://{bucket}/run/train/")
    gen = ltdi_ray.load_generator(summary["generator_uri"], endpoint_url=s3_endpoint)
    ep = gen.family.sample_many("test", range(3))
    assert gen.generate_batch(*support_of(ep, gen.family), seed=0).shape == (3, 1761)
    assert Location.parse(summary["uri"], s3_endpoint).list()  # Ray Train's checkpoints live in the bucket too
