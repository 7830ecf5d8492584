"""train -> load_generator -> evaluate on a real local Ray, locally and on S3 (moto server)."""

import hashlib
import json
import re

import numpy as np
import pytest
import torch
from conftest import smoke_config as config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ltdi_ray
from ltdi_ray.errors import ConfigError, DataError
from ltdi_ray.evaluation.background import finish, training_pools
from ltdi_ray.evaluation.methods import METHODS
from ltdi_ray.generator.checkpoint import META, read_meta, read_train_state
from ltdi_ray.meta.meta_init import meta_train_on_pools
from ltdi_ray.pipelines.collect import run_collect
from ltdi_ray.pipelines.evaluate import evaluation_of, run_evaluate
from ltdi_ray.pipelines.plot import run_plot
from ltdi_ray.pipelines.train import run_train
from ltdi_ray.storage.fs import Location
from ltdi_ray.tasks.episodes import support_of
from ltdi_ray.trajectories.inner import evaluate
from ltdi_ray.trajectories.theta0 import initial_theta, read_stored


def test_train_publishes_a_complete_tensor_only_checkpoint(trained):
    cfg, summary = trained
    assert summary["epochs"] == 2 and summary["workers"] == 1 and np.isfinite(summary["val_metric"])
    loc = Location.parse(summary["generator_uri"])
    meta = json.loads(loc.read_bytes(META))
    assert sorted(loc.list()) == sorted(["generator.json", *(f["path"] for f in meta["files"].values())])
    assert [re.sub("-[0-9a-f]{16}", "", f["path"]) for f in meta["files"].values()] == \
        ["model.safetensors", "stats.safetensors", "train_state.pt"]
    assert meta["param_spec"]["dim"] == 1761 and meta["target_indices"] == [0, 1, 3, 4]  # bridge k=3 over 0,5,..,20
    assert meta["config"]["diffusion"]["segments"] == 3 and meta["num_train_tasks"] == 32
    state = read_train_state(loc, meta)  # loads with weights_only=True
    assert state["epoch"] == 1 and "state" in state["optimizer"]
    stored, _ = read_stored(Location.parse(cfg.storage.uri).child("trajectories"))
    assert torch.equal(ltdi_ray.load_generator(str(loc)).theta0.shared, stored)  # chains start where the trajectories did



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
    assert torch.allclose(chain[0][1], gen.theta0.shared.expand(3, -1), atol=1e-5)
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
        z = gen.diffusion.sample(gen.model.denoiser, cond, gen.spec.dim, start=gen.norm.normalize(gen.theta0.shared) + extra,
                                 sampler="ddim", sample_steps=1, generator=rng)
    cands = gen.norm.denormalize(z).view(5, n, -1)
    pick = evaluate(gen.view().loss, cands, sx, sy).argmin(1)
    torch.testing.assert_close(best, cands[torch.arange(5), pick])
    torch.testing.assert_close(cands[:, 0], gen.generate_batch(sx, sy, seed=5))  # candidate 0 = the single sample
    assert not torch.equal(cands[:, 0], cands[:, 1])


_GENERATORS = {}


def _generator(trained):
    """The trained generator, loaded once (hypothesis calls the test body many times)."""
    uri = trained[1]["generator_uri"]
    if uri not in _GENERATORS:
        _GENERATORS[uri] = ltdi_ray.load_generator(uri)
    return _GENERATORS[uri]


@pytest.mark.parametrize("sx, sy, needle", [
    (torch.zeros(2, 5), torch.zeros(2, 5, 1), "support_x must have shape (tasks, shots, 1)"),
    (torch.zeros(2, 5, 1), torch.zeros(2, 4, 1), "disagree on (tasks, shots)"),
    (torch.zeros(2, 5, 1, dtype=torch.long), torch.zeros(2, 5, 1), "support_x must be a floating-point tensor"),
    (torch.full((2, 5, 1), float("nan")), torch.zeros(2, 5, 1), "support_x contains NaN or Inf"),
])
def test_generate_rejects_bad_supports_with_one_line(trained, sx, sy, needle):
    gen = _generator(trained)
    with pytest.raises(DataError) as err:
        gen.generate_batch(sx, sy)
    assert needle in str(err.value) and "\n" not in str(err.value)



@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.lists(st.integers(0, 6), min_size=1, max_size=4),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bool]))
def test_generate_accepts_exactly_the_well_formed_supports(trained, shape, dtype):
    gen = _generator(trained)
    sx, sy = torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
    ok = len(shape) == 3 and shape[-1] == 1 and shape[0] >= 1 and shape[1] >= 1 and dtype.is_floating_point
    if ok:
        assert gen.generate_batch(sx, sy, seed=0).shape == (shape[0], 1761)
    else:
        with pytest.raises(DataError) as err:
            gen.generate_batch(sx, sy, seed=0)
        assert "\n" not in str(err.value) and ("support_x" in str(err.value) or "support_y" in str(err.value))


def _copy(src: Location, dst: Location) -> Location:
    for name in src.list():
        dst.write_atomic(name, src.read_bytes(name))
    return dst


def _replace(loc: Location, part: str, data: bytes) -> None:
    """Rewrite checkpoint file ``part`` and its checksum in ``generator.json``: a file that matches its record."""
    meta = json.loads(loc.read_bytes(META))
    loc.write_atomic(meta["files"][part]["path"], data)
    meta["files"][part]["sha256"] = hashlib.sha256(data).hexdigest()
    loc.write_atomic(META, json.dumps(meta).encode())


def test_a_checkpoint_file_that_fails_its_checksum_or_holds_nan_is_refused_naming_it(trained, tmp_path):
    from safetensors.torch import save

    src = Location.parse(trained[1]["generator_uri"])
    flipped = _copy(src, Location.parse(str(tmp_path / "flipped")))
    name = json.loads(flipped.read_bytes(META))["files"]["model"]["path"]
    data = bytearray(flipped.read_bytes(name))
    data[-1] ^= 1
    flipped.write_atomic(name, bytes(data))
    with pytest.raises(DataError, match=rf"flipped/{name} fails the checksum generator.json records for it"):
        ltdi_ray.load_generator(str(flipped))
    nan = _copy(src, Location.parse(str(tmp_path / "nan")))
    stats = _tensors_of(nan, "stats")
    stats["std"][3] = float("nan")
    _replace(nan, "stats", save(stats))
    with pytest.raises(DataError, match=r"nan/stats-[0-9a-f]{16}.safetensors holds non-finite values in std"):
        ltdi_ray.load_generator(str(nan))


def _tensors_of(loc: Location, part: str) -> dict:
    from safetensors.torch import load

    return load(loc.read_bytes(json.loads(loc.read_bytes(META))["files"][part]["path"]))


def test_a_checkpoint_that_does_not_fit_its_record_fails_naming_the_file(trained, tmp_path, omniglot_root):
    from safetensors.torch import save

    src = Location.parse(trained[1]["generator_uri"])
    stats = _copy(src, Location.parse(str(tmp_path / "stats")))
    _replace(stats, "stats", save({"mean": torch.zeros(99), "std": torch.ones(99), "theta0": torch.zeros(99)}))
    with pytest.raises(DataError, match=r"stats-[0-9a-f]{16}.safetensors holds statistics for another ParamSpec"):
        ltdi_ray.load_generator(str(stats))
    # a record whose ParamSpec is another network's (the base net 1-20-20-1): the weights do not fit it
    spec = _copy(src, Location.parse(str(tmp_path / "spec")))
    meta = json.loads(spec.read_bytes(META))
    meta["param_spec"] = {"names": meta["param_spec"]["names"],
                          "shapes": [[min(n, 20) for n in shape] for shape in meta["param_spec"]["shapes"]]}
    spec.write_atomic(META, json.dumps(meta).encode())
    with pytest.raises(DataError, match=r"model-[0-9a-f]{16}.safetensors does not fit the generator its config describes"):
        ltdi_ray.load_generator(str(spec))
    # a record of another family (Omniglot heads) over sinusoid weights
    family = _copy(src, Location.parse(str(tmp_path / "family")))
    meta = json.loads(family.read_bytes(META))
    meta["config"]["task"] = {"family": "omniglot", "root": omniglot_root, "generate": "head", "backbone": "random"}
    family.write_atomic(META, json.dumps(meta).encode())
    with pytest.raises(DataError, match=r"model-[0-9a-f]{16}.safetensors does not fit the generator its config describes") as err:
        ltdi_ray.load_generator(str(family))
    assert "\n" not in str(err.value)


def test_a_checkpoint_of_the_config_layout_before_task_families_is_refused_by_its_format(trained, tmp_path):
    """Format 1 stored the root ``start`` and ``backbone`` sections; its configs no longer compose."""
    old = _copy(Location.parse(trained[1]["generator_uri"]), Location.parse(str(tmp_path / "old")))
    meta = json.loads(old.read_bytes(META))
    old.write_atomic(META, json.dumps({**meta, "format_version": 1}).encode())
    with pytest.raises(DataError, match=r"generator.json is not a ltdi_ray.generator v3 checkpoint"):
        ltdi_ray.load_generator(str(old))


def test_train_refuses_a_dataset_collected_with_another_config(trained):
    cfg, _ = trained
    with pytest.raises(ConfigError, match=r"collected with another config \(trajectory.lr"):
        run_train(config(cfg.storage.uri, "trajectory.lr=0.02"))

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
    # the support-start methods: Omniglot heads only; in_context: text only; bridge_k3 is the evaluated generator
    skipped = ("protonet", "protonet_sgd", "in_context", "bridge_k3")
    assert list(methods) == [m for m in cfg.evaluate.methods if m not in skipped]
    assert all(np.isfinite(m["mean"]) and m["ci95"] >= 0 and m["ms_per_task"] > 0 for m in methods.values())
    record = json.loads(open(summary["uri"]).read())
    assert record["tasks"] == 16 and record["metric"] == "mse" and set(record["settings"]) >= {"maml", "finetune"}
    assert record["settings"]["hypernet"]["diffusion"]["segments"] == 1  # the bridge's control: no diffusion
    assert record["settings"]["hypernet"]["diffusion"]["variant"] == "hypernet"
    paired = record["ltdi_minus"]  # the same tasks for every method: the difference of means is the mean difference
    assert set(paired) == set(methods) - {"ltdi"}
    for name, d in paired.items():
        assert d["mean"] == pytest.approx(record["methods"]["ltdi"]["mean"] - record["methods"][name]["mean"], abs=1e-9)
        assert d["ci95"] >= 0
    assert "method" in capsys.readouterr().out


def test_baselines_meta_trained_as_concurrent_ray_tasks_equal_the_in_process_run(trained):
    import ray

    cfg, summary = trained
    gen = ltdi_ray.load_generator(summary["generator_uri"])
    base = initial_theta(gen.family, gen.cfg.trajectory.init_seed)
    assert not torch.equal(gen.theta0.shared, base)  # the trajectories started at the Reptile-learned start (the default)
    ev = evaluation_of(cfg)
    names = ["fomaml", "maml", "reptile"]
    assert sorted(names, key=lambda m: -METHODS[m].cost(ev)) == ["reptile", "maml", "fomaml"]  # longest first
    refs = {m: METHODS[m].launch(ev) for m in names}  # what the evaluate stage waits for with finish()
    assert all(isinstance(ref, ray.ObjectRef) for ref in refs.values())  # running side by side as Ray tasks
    pools = training_pools(cfg, gen)
    for method, ref in refs.items():
        theta, settings = finish(ref)
        assert settings["threads"] == 1 and settings["method"] == method
        local, _ = meta_train_on_pools(gen.view().loss, base, pools, 1, settings["support"], method, cfg.evaluate.baseline)
        assert not torch.equal(local, base)  # the baselines meta-train from the base net's own init
        torch.testing.assert_close(theta, local, atol=1e-6, rtol=1e-5)  # 1 thread there, the session's here


def test_train_and_load_on_s3(ray_session, bucket, s3_endpoint):
    cfg = config(f"s3://{bucket}/run", "train.epochs=1", endpoint=s3_endpoint)
    run_collect(cfg)
    summary = run_train(cfg)
    assert summary["generator_uri"] == f"s3://{bucket}/run/generator" and summary["uri"].startswith(f"s3://{bucket}/run/train/")
    gen = ltdi_ray.load_generator(summary["generator_uri"], endpoint_url=s3_endpoint)
    ep = gen.family.sample_many("test", range(3))
    assert gen.generate_batch(*support_of(ep, gen.family), seed=0).shape == (3, 1761)
    assert Location.parse(summary["uri"], s3_endpoint).list()  # Ray Train's checkpoints live in the bucket too


def _readme_python_blocks():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    return [block.split("```", 1)[0] for block in readme.split("## Python API", 1)[1].split("```python\n")[1:3]]


def test_the_readme_python_api_example_runs(trained):
    """README's generation block, as a user pastes it, against this run's generator."""
    scope = {}
    exec(_readme_python_blocks()[0].replace("./ltdi_runs/sinusoid/generator", trained[1]["generator_uri"]), scope)
    assert scope["y"].shape == (3, 1) and scope["thetas"].shape == (8, 1761)
    assert isinstance(scope["net_b"], torch.nn.Module) and scope["chain"][-1][1].shape == (8, 1761)


def test_the_readme_stages_from_python_example_runs(ray_session, tmp_path):
    """README's block that runs stages from Python after ``ray.init()``: the session's Ray is used as it is."""
    block = _readme_python_blocks()[1]
    assert "ray.init()" in block
    scope = {}
    exec(block.replace("ray.init()", "assert ray.is_initialized()").replace("/tmp/ltdi_smoke", str(tmp_path)), scope)
    assert scope["collected"]["tasks"] == 64 and scope["trained"]["epochs"] == 2
    assert set(scope["results"]["methods"]) == {"init", "maml", "ltdi"} and scope["gen"].spec.dim == 1761
