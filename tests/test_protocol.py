"""The evaluation protocol: untouched test tasks, the training split refused, seeds recorded, the controls."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import smoke_config

from ltdi_ray.errors import ConfigError, DataError
from ltdi_ray.evaluation.diagnostics import DIAGNOSTICS
from ltdi_ray.evaluation.methods import METHODS
from ltdi_ray.evaluation.protocol import choose_step_sizes
from ltdi_ray.evaluation.stats import over_seeds
from ltdi_ray.pipelines.evaluate import evaluation_of, run_evaluate
from ltdi_ray.pipelines.train import open_dataset


def test_evaluate_refuses_the_split_the_generator_was_trained_on(trained):
    cfg, _ = trained
    with pytest.raises(ConfigError, match=r"evaluate.split=train: the generator at .* was trained on train tasks") as err:
        evaluation_of(smoke_config(cfg.storage.uri, "evaluate.split=train"))
    assert "\n" not in str(err.value)


def test_test_tasks_come_from_the_evaluate_seed_not_the_collect_seed(trained):
    cfg, _ = trained
    ev = evaluation_of(cfg)
    assert cfg.evaluate.seed != cfg.collect.seed
    drawn = ev.view.family.sample_many("test", range(ev.n), cfg.evaluate.seed)
    retired = ev.view.family.sample_many("test", range(ev.n), cfg.collect.seed)  # what probes used before
    np.testing.assert_array_equal(ev.episodes["amplitude"], drawn["amplitude"])
    assert not np.isin(ev.episodes["amplitude"], retired["amplitude"]).any()


def test_results_record_split_seeds_task_range_and_the_controls(trained):
    cfg, _ = trained
    methods = ["ltdi", "hypernet", "bilevel_time", "encoder_fit", "condition_shuffle", "maml_pool"]
    run = smoke_config(cfg.storage.uri, "evaluate.seed=7", "evaluate.baseline.seed=3", "evaluate.diagnostics=[memorisation]",
                       f"evaluate.methods=[{','.join(methods)}]")
    record = json.loads(open(run_evaluate(run)["uri"]).read())
    assert (record["split"], record["seed"], record["task_ids"], record["tasks"]) == ("test", 7, [0, 16], 16)
    assert record["trained_on"] == {"split": "train", "seed": 0, "tasks": 32}
    assert record["seeds"] == {"train": 0, "baseline": 3} and record["settings"]["maml_pool"]["seed"] == 3
    assert list(record["methods"]) == methods and all(np.isfinite(m["mean"]) for m in record["methods"].values())
    assert record["settings"]["hypernet"]["diffusion"]["variant"] == "hypernet"
    timed = record["settings"]["bilevel_time"]  # the paper's bi-level training cut to the generator's time
    assert timed["meta"] == "reptile" and 0 < timed["throughput_ratio"] and 1 <= timed["steps_per_epoch"] <= 3
    assert record["settings"]["maml_pool"]["outer_query"] == 95  # the pool of 100 minus the 5-point support
    memo = record["diagnostics"]["memorisation"]
    assert memo["training_thetas"] == 32 and memo["generated_to_nearest_training"]["mean"] > 0


def test_condition_shuffle_generates_each_task_from_the_next_tasks_support(trained):
    cfg, _ = trained
    ev = evaluation_of(cfg)
    own, shuffled = METHODS["ltdi"].run(ev), METHODS["condition_shuffle"].run(ev)
    torch.testing.assert_close(shuffled, own.roll(-1, 0))
    assert not torch.equal(shuffled, own)


def test_encoder_fit_is_the_ridge_fit_of_the_support(trained):
    cfg, _ = trained
    ev = evaluation_of(cfg)
    encoder = ev.gen.model.encoder
    pred = METHODS["encoder_fit"].run(ev).values
    assert pred.shape == (ev.n, 100, 1)
    at_support = encoder.fit_predict(ev.sx, ev.sy, ev.sx)  # lambda 1e-4: nearly interpolates 5 points
    torch.testing.assert_close(at_support, ev.sy, atol=0.05 * float(ev.sy.abs().max()), rtol=0)


def test_memorisation_finds_copied_training_weights_at_distance_zero(trained):
    cfg, _ = trained
    ev = evaluation_of(cfg)
    copies = torch.from_numpy(open_dataset(cfg).load(["checkpoints"])["checkpoints"][: ev.n, -1])
    memo = DIAGNOSTICS["memorisation"](ev, {"ltdi": copies})
    assert memo["generated_to_nearest_training"]["mean"] == pytest.approx(0, abs=1e-5)
    assert memo["true_to_nearest_training"]["mean"] > 0.01 and memo["ratio_of_means"] < 1e-3


def test_a_test_time_task_change_is_limited_to_the_familys_eval_keys(trained):
    cfg, _ = trained
    ev = evaluation_of(smoke_config(cfg.storage.uri, "+evaluate.task.pool=random"))
    grid = np.linspace(-5, 5, 100, dtype=np.float32)
    assert not np.isin(ev.episodes["pool_x"][..., 0], grid).all()  # supports at continuous x
    with pytest.raises(ConfigError, match=r"evaluate.task.shots: test episodes of the sinusoid family may change only"):
        evaluation_of(smoke_config(cfg.storage.uri, "+evaluate.task.shots=10"))


def test_task_keys_that_contradict_the_generator_are_named_and_the_generators_are_used(trained, caplog):
    cfg, _ = trained
    with caplog.at_level("WARNING", logger="ltdi_ray"):
        ev = evaluation_of(smoke_config(cfg.storage.uri, "task.shots=7"))
    shots = ev.gen.cfg.task.shots
    assert f"the generator's task config is used, not this command's (task.shots: {shots} -> 7)" in caplog.text
    assert ev.episodes["support_idx"].shape[1] == shots != 7


def test_more_test_tasks_than_the_machine_can_hold_are_refused_before_sampling(trained):
    cfg, _ = trained
    with pytest.raises(ConfigError, match=r"^config key 'evaluate.num_tasks': the weights of \d+ methods on "
                                          r"1000000000 tasks needs about .* GiB, more than this machine's"):
        evaluation_of(smoke_config(cfg.storage.uri, "evaluate.num_tasks=1000000000"))


def test_over_seeds_calls_a_win_only_on_every_seed_or_a_pooled_interval_excluding_zero():
    base = torch.linspace(1, 2, 50)
    rows = [{"ltdi": base - 0.1, "a": base, "b": base + torch.tensor(0.2 if s else -0.2), "c": base.clone()}
            for s in range(3)]
    summary = over_seeds(rows)  # lower is better (mse)
    verdicts = {m: d["verdict"] for m, d in summary["ltdi_minus"].items()}
    assert verdicts["a"] == "ahead"  # ltdi below a on every seed
    assert verdicts["b"] == "ahead"  # behind on seed 0, but the pooled interval excludes 0
    assert summary["methods"]["b"]["sd_over_seeds"] == pytest.approx(0.2309, abs=1e-4)
    noise = 0.5 * torch.tensor([1.0, -1.0]).repeat(25)
    mixed = [{"ltdi": base + noise + shift, "a": base} for shift in (0.01, -0.01, 0.0)]
    assert over_seeds(mixed)["ltdi_minus"]["a"]["verdict"] == "level"  # seeds disagree and the interval holds 0
    assert over_seeds([{"ltdi": base + 0.1, "a": base}] * 3)["ltdi_minus"]["a"]["verdict"] == "behind"
    assert over_seeds(rows, higher_is_better=True)["ltdi_minus"]["a"]["verdict"] == "behind"


def test_a_kept_baseline_is_reused_only_for_the_same_inputs_and_checked_on_read(trained):
    cfg, _ = trained

    def evaluate(*extra):
        run = smoke_config(cfg.storage.uri, "evaluate.baseline.reuse=true", "evaluate.methods=[fomaml]", *extra)
        return json.loads(open(run_evaluate(run)["uri"]).read())

    first, again = evaluate(), evaluate()
    kept = again["settings"]["fomaml"].pop("reused_from")
    assert "reused_from" not in first["settings"]["fomaml"] and again["settings"] == first["settings"]
    assert again["per_task"] == first["per_task"]
    other = evaluate("evaluate.baseline.seed=5")  # another input: meta-trained again, kept apart
    assert "reused_from" not in other["settings"]["fomaml"] and other["per_task"] != first["per_task"]
    theta = Path(kept) / "theta.safetensors"
    data = bytearray(theta.read_bytes())
    data[-1] ^= 1
    theta.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"kept baseline .*fomaml-\w+ does not match its record") as err:
        evaluate()
    assert "\n" not in str(err.value)
    shutil.rmtree(Path(cfg.storage.uri) / "baselines")


def test_choosing_step_sizes_for_methods_without_one_runs_nothing():
    # the bi-level rows on a finished root (`--methods ltdi bilevel bilevel_time`) have no step size to choose;
    # the overrides below would fail to compose if an evaluate call were made
    assert choose_step_sizes(["no.such.key=1"], ["ltdi", "bilevel", "bilevel_time"], [0.1], 10) == {}
