import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ltdi_ray.config import load_config
from ltdi_ray.config.compose import dotted, overrides_from_argv, to_plain
from ltdi_ray.config.schema import loss_term_weight
from ltdi_ray.errors import ConfigError
from ltdi_ray.tasks.omniglot import OmniglotConfig
from ltdi_ray.tasks.sinusoid import SinusoidConfig


def test_defaults_compose_to_validated_dataclasses():
    cfg = load_config([])
    assert isinstance(cfg.task, SinusoidConfig)
    assert (cfg.task.shots, cfg.task.pool_size, cfg.task.hidden) == (5, 100, [40, 40])
    assert cfg.storage.uri.startswith("/") and cfg.storage.uri.endswith("ltdi_runs/sinusoid")


def test_the_ridge_fit_defaults_on_with_fourier_features_and_refuses_to_run_without_them():
    assert load_config([]).model.encoder_ridge == 1e-4
    assert load_config(["model.encoder_fourier=0"]).model.encoder_ridge == 0
    with pytest.raises(ConfigError, match=r"'model.encoder_ridge': needs model.encoder_fourier > 0"):
        load_config(["model.encoder_fourier=0", "model.encoder_ridge=1e-3"])


def test_smoke_experiment_and_task_group():
    cfg = load_config(["experiment=smoke", "task=omniglot", "task.root=/data/omni"])
    assert isinstance(cfg.task, OmniglotConfig)
    assert cfg.collect.num_tasks == 64 and cfg.trajectory.steps == 20
    assert cfg.storage.uri.endswith("smoke-omniglot")


def test_s3_uri_is_kept_verbatim():
    cfg = load_config(["storage.uri=s3://bucket/prefix", "storage.endpoint_url=http://127.0.0.1:9000"])
    assert cfg.storage.uri == "s3://bucket/prefix"


@pytest.mark.parametrize("override, key", [
    ("collect.num_tasks=0", "collect.num_tasks"),
    ("collect.num_tasks=abc", "collect.num_tasks"),
    ("collect.nope=1", "collect.nope"),
    ("trajectory.save_every=7", "trajectory.save_every"),
    ("trajectory.optimizer=rmsprop", "trajectory.optimizer"),
    ("trajectory.lr=-1", "trajectory.lr"),
    ("task.shots=500", "task.pool_size"),
    ("storage.uri=gs://b/p", "storage.uri"),
    ("storage.uri=/tmp/../etc", "storage.uri"),
    ("storage.endpoint_url=127.0.0.1:9000", "storage.endpoint_url"),
    ("task=omniglot", "task.root"),
    ("model.encoder_ridge=-1", "model.encoder_ridge"),
    ("evaluate.seed=-1", "evaluate.seed"),
    ("evaluate.diagnostics=[nope]", "evaluate.diagnostics"),
    ("evaluate.split=holdout", "evaluate.split"),
    ("diffusion.segments=3", "diffusion.segments"),  # sinusoid's default variant is the one-call hypernet
    ("reptile_start.meta_steps=0", "reptile_start.meta_steps"),
    ("reptile_start.inner_lr=0", "reptile_start.inner_lr"),
    ("trajectory.theta0=maml", "trajectory.theta0"),
])
def test_bad_values_fail_at_compose_time_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config([override])
    assert key in str(err.value) and "\n" not in str(err.value)


def test_unknown_family_lists_the_choices():
    with pytest.raises(ConfigError, match=r"no option 'nope' \(choices: custom, omniglot, sinusoid, text\)"):
        load_config(["task=nope"])


def test_omniglot_shots_plus_query_must_fit_twenty_drawings():
    with pytest.raises(ConfigError, match="task.shots"):
        load_config(["task=omniglot", "task.root=/x", "task.shots=16", "task.query_per_class=5"])


def test_the_generator_is_the_familys_choice_on_validation_and_a_chosen_variant_gets_its_own_segments():
    from ltdi_ray.config.compose import config_from_plain, to_plain

    def process(*overrides):
        d = load_config(list(overrides)).diffusion
        return d.variant, d.segments

    head = ["task=omniglot", "task.root=/data/omni", "task.generate=head"]
    assert process() == ("hypernet", 1)  # sinusoid
    assert process(*head) == ("bridge", 3)
    assert process("task=omniglot", "task.root=/data/omni") == ("bridge", 3)  # a family that says nothing
    assert process("diffusion.variant=bridge") == ("bridge", 3)  # k follows the variant asked for
    assert process("diffusion.variant=local_consistency", "diffusion.segments=2") == ("local_consistency", 2)
    assert process(*head, "diffusion.variant=hypernet") == ("hypernet", 1)
    again = config_from_plain(to_plain(load_config([])))  # checkpoints keep the resolved process
    assert (again.diffusion.variant, again.diffusion.segments) == ("hypernet", 1)
    with pytest.raises(ConfigError, match="'diffusion.segments': must be 1 for diffusion.variant=hypernet"):
        load_config(["diffusion.segments=3"])


@settings(max_examples=40, deadline=None)
@given(steps=st.integers(-5, 300), save_every=st.integers(-5, 300))
def test_trajectory_validator_accepts_exactly_the_divisible_pairs(steps, save_every):
    ok = steps >= 1 and save_every >= 1 and steps % save_every == 0
    try:
        cfg = load_config([f"trajectory.steps={steps}", f"trajectory.save_every={save_every}"])
    except ConfigError as err:
        assert not ok, err
        assert "trajectory." in str(err)
    else:
        assert ok and (cfg.trajectory.steps, cfg.trajectory.save_every) == (steps, save_every)


def test_a_bare_path_first_argument_is_the_run_root():
    assert overrides_from_argv(["./runs/a", "plot.tasks=2"]) == ["storage.uri=./runs/a", "plot.tasks=2"]
    assert overrides_from_argv(["s3://b/run"]) == ["storage.uri=s3://b/run"]
    with pytest.raises(ConfigError, match="is not an override"):
        overrides_from_argv(["collect.num_tasks"])  # a forgotten '=value', not a path


def test_the_function_space_term_needs_single_level_bridge_training():
    assert loss_term_weight(load_config([]), "function_loss") == 0.1  # the measured default for sinusoid
    assert loss_term_weight(load_config(["train.meta=reptile"]), "function_loss") == 0.0
    assert loss_term_weight(load_config(["diffusion.variant=local_consistency"]), "function_loss") == 0.0
    assert loss_term_weight(load_config(["task=omniglot", "task.root=/data/omni"]), "function_loss") == 0.0  # not measured there
    assert loss_term_weight(load_config(["train.function_loss=0"]), "function_loss") == 0.0
    assert load_config([]).train.function_loss is None  # resolved where used: derived configs get their own
    with pytest.raises(ConfigError, match="'train.function_loss': applies to single-level training"):
        load_config(["train.function_loss=0.1", "train.meta=reptile"])
    with pytest.raises(ConfigError, match="'train.function_loss': needs diffusion.variant=bridge"):
        load_config(["train.function_loss=0.1", "diffusion.variant=local_consistency", "diffusion.segments=1"])
    with pytest.raises(ConfigError, match="'train.function_loss': must be >= 0"):
        load_config(["train.function_loss=-1"])


def test_the_chain_loss_defaults_on_for_omniglot_heads_and_needs_the_deterministic_bridge_chain():
    head = ["task=omniglot", "task.root=/data/omni", "task.generate=head"]
    assert loss_term_weight(load_config(head), "chain_loss") == 0.3  # the measured default
    assert loss_term_weight(load_config([]), "chain_loss") == 0.0  # sinusoid: not measured
    assert loss_term_weight(load_config(["task=omniglot", "task.root=/data/omni"]), "chain_loss") == 0.0  # full networks
    assert loss_term_weight(load_config([*head, "diffusion.sampler=ddpm"]), "chain_loss") == 0.0
    assert loss_term_weight(load_config([*head, "train.chain_loss=0"]), "chain_loss") == 0.0
    assert loss_term_weight(load_config(["train.chain_loss=0.3"]), "chain_loss") == 0.3
    with pytest.raises(ConfigError, match="'train.chain_loss': needs diffusion.variant=bridge or hypernet and diffusion.sampler=ddim"):
        load_config([*head, "train.chain_loss=0.1", "diffusion.sampler=ddpm"])
    with pytest.raises(ConfigError, match="'train.chain_loss': applies to single-level training"):
        load_config(["train.chain_loss=0.1", "train.meta=reptile"])
    with pytest.raises(ConfigError, match="'train.chain_loss': must be >= 0"):
        load_config(["train.chain_loss=-1"])


def test_omniglot_heads_default_to_protonet_starts_and_noise_free_bridges():
    from ltdi_ray.config.compose import config_from_plain, to_plain

    def resolved(*overrides):
        cfg = load_config(list(overrides))
        return cfg.trajectory.theta0, cfg.diffusion.bridge_noise, cfg.diffusion.bridge_start_noise

    head = ["task=omniglot", "task.root=/data/omni", "task.generate=head"]
    assert resolved() == ("reptile", 0.5, 0.5)  # sinusoid: a meta-learned start
    assert resolved("task=omniglot", "task.root=/data/omni") == ("shared", 0.5, 0.5)  # full networks
    assert resolved(*head) == ("prototype", 0.0, 0.0)
    assert resolved(*head, "trajectory.theta0=shared") == ("shared", 0.5, 0.5)  # noise follows the start
    assert resolved(*head, "diffusion.bridge_noise=0.3") == ("prototype", 0.3, 0.0)
    # checkpoints and Ray workers rebuild the resolved values, not the nulls
    again = config_from_plain(to_plain(load_config(head)))
    assert (again.trajectory.theta0, again.diffusion.bridge_noise) == ("prototype", 0.0)
    with pytest.raises(ConfigError, match="'diffusion.bridge_noise': must be >= 0"):
        load_config(["diffusion.bridge_noise=-0.1"])


@settings(max_examples=40, deadline=None)
@given(steps=st.integers(-3, 60), segments=st.integers(-3, 60), lr=st.floats(-1.0, 1.0, allow_nan=False),
       weight=st.floats(-1.0, 2.0, allow_nan=False))
def test_method_validators_accept_exactly_the_valid_values(steps, segments, lr, weight):
    ok = {"diffusion": 2 <= steps <= 1000 and 1 <= segments <= steps, "train.lr": lr > 0,
          "train.function_loss": weight >= 0}
    try:
        load_config(["diffusion.variant=bridge", f"diffusion.steps={steps}", f"diffusion.segments={segments}",
                     f"train.lr={lr}", f"train.function_loss={weight}"])
    except ConfigError as err:
        assert not all(ok.values()), err
        assert "\n" not in str(err)
        assert any(f"'{key}" in str(err) for key, good in ok.items() if not good), err  # names a culprit
    else:
        assert all(ok.values())


def test_a_family_named_by_import_path_gets_its_own_schema_and_one_line_errors(monkeypatch):
    from conftest import REPO

    monkeypatch.syspath_prepend(str(REPO / "examples" / "polynomial"))
    cfg = load_config(["task.family=fewshot_poly:PolynomialFamily", "task.degree=2", "experiment=smoke"])
    assert type(cfg.task).__name__ == "PolynomialConfig" and cfg.task.degree == 2
    assert cfg.storage.uri.endswith("ltdi_runs/smoke-polynomial")  # the family's short name
    assert cfg.trajectory.theta0 == "shared" and cfg.model.encoder_ridge == 1e-4  # generic and regression defaults
    for overrides, needle in [
        (["task.family=fewshot_poly:PolynomialFamily", "task.degre=2"], "unknown config key 'task.degre'"),
        (["task.family=fewshot_poly:PolynomialFamily", "task.degree=99"], "'task.degree': must be in [0, 10]"),
        (["task.family=no_such_module:Family"], "cannot import no_such_module:Family"),
        (["task.family=ltdi_ray.config.schema:Config"], "is not a subclass of ltdi_ray.tasks.TaskFamily"),
        (["task.family=nope"], "unknown task family 'nope'"),
        (["task=custom"], "task=custom needs task.family=package.module:Class"),
        (["task=omniglot", "task.family=fewshot_poly:PolynomialFamily"], "name different families"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_config(overrides)
        assert needle in str(err.value) and "\n" not in str(err.value), (overrides, str(err.value))


@pytest.mark.parametrize("bad", ["inf", "-inf", "nan"])
def test_every_float_key_refuses_a_non_finite_value_naming_the_key(bad):
    floats = [k for k, v in dotted(to_plain(load_config([]))).items() if isinstance(v, float)]
    assert len(floats) >= 20
    for key in floats:
        with pytest.raises(ConfigError, match=rf"^config key '{re.escape(key)}': .*{bad.lstrip('-')}") as err:
            load_config([f"{key}={bad}"])
        assert "\n" not in str(err.value)


_KEYS = sorted(dotted(to_plain(load_config([]))))
_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(st.characters(codec="ascii", exclude_characters="\n\r\x00"), max_size=12),
                    st.lists(st.integers(-5, 50), max_size=4), st.sampled_from(["s3://b/x", "../up", "", "[1,", "${oops}"]))


@settings(max_examples=150, deadline=None)
@given(pairs=st.lists(st.tuples(st.sampled_from(_KEYS), _VALUES), min_size=1, max_size=3))
def test_any_override_of_a_schema_key_composes_or_fails_with_one_line_naming_a_key(pairs):
    """Whatever a user types for a key of the schema: a config, or a ConfigError in one line (the CLI's exit 2)."""
    overrides = [f"{key}={_value(v)}" for key, v in pairs]
    try:
        load_config(overrides)
    except ConfigError as err:
        assert "\n" not in str(err) and str(err), overrides


def _value(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return "[" + ",".join(map(str, v)) + "]"
    return str(v)


def test_no_environment_variable_is_resolved_into_a_config(tmp_path, monkeypatch):
    monkeypatch.setenv("LTDI_SECRET", "s3cr3t")
    path = tmp_path / "best.yaml"
    path.write_text("train:\n  lr: 0.001\nstorage:\n  uri: /runs/${oc.env:LTDI_SECRET}\n")
    with pytest.raises(ConfigError, match=r"^config_file=.*best.yaml: storage.uri holds an interpolation "
                                          r"\('/runs/\$\{oc.env:LTDI_SECRET\}'\); write the value itself") as err:
        load_config([f"config_file={path}"])
    assert "s3cr3t" not in str(err.value)
    with pytest.raises(ConfigError, match=r"^storage.uri holds an interpolation"):
        load_config(["storage.uri=/runs/${oc.env:LTDI_SECRET}"])
    path.write_text("train:\n  lr: 0.002\n")
    assert load_config([f"config_file={path}"]).train.lr == 0.002
