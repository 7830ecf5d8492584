"""A task family from outside the package (examples/polynomial): every stage, from the user's own
directory, with no edit inside ltdi_ray/. The driver imports the family from its working directory;
collect actors, Train workers, baseline tasks and Tune trials import it through Ray's job code path."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

EXAMPLE = REPO / "examples" / "polynomial"


def run_stage(ray_session, *args, timeout=600):
    """``python -m ltdi_ray <args>`` run from the example's directory, as a job of the session's Ray."""
    address = ray_session.get_runtime_context().gcs_address
    res = subprocess.run([sys.executable, "-m", "ltdi_ray", *args, f"ray.address={address}"], cwd=EXAMPLE,
                         capture_output=True, text=True, timeout=timeout, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def run(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("polynomial")
    base = ["config_file=polynomial.yaml", "experiment=smoke", f"storage.uri={root}", "collect.num_tasks=32",
            "evaluate.methods=[init,maml,ltdi]"]
    return root, base, run_stage(ray_session, "pipeline", *base)


def test_collect_train_evaluate_run_on_a_family_of_the_users_own(run):
    root, _, summary = run
    assert summary["collect"]["tasks"] == 32 and summary["train"]["epochs"] == 2
    assert set(summary["evaluate"]) == {"init", "maml", "ltdi"}
    manifest = json.loads((root / "trajectories" / "_manifest.json").read_text())
    assert manifest["family"] == "fewshot_poly:PolynomialFamily" and manifest["task_family"]["family"] == "polynomial"
    assert manifest["schema"]["coefs"]["shape"] == [4]  # the family's own episode field (degree 3)
    record = json.loads((root / "results.json").read_text())
    assert record["task"] == "polynomial" and record["metric"] == "mse" and record["shots"] == 5


def test_plot_runs_on_it(ray_session, run):
    root, base, _ = run
    plots = run_stage(ray_session, "plot", *base, "plot.tasks=2")
    assert {p.rsplit("/", 1)[-1] for p in plots["plots"]} == {"training_curves.png", "weight_space.png",
                                                              "predictions.png"}  # 1-D functions: drawn as curves


@pytest.mark.slow  # ~40 s; the default tier sweeps the built-in family (test_tune.py)
def test_a_sweep_runs_on_it(ray_session, run):
    root, base, _ = run
    sweep = run_stage(ray_session, "tune", *base, "tune=none", "+tune.space.diffusion.segments.grid=[1,2]",
                      "train.epochs=1", "train.cpus_per_worker=1", "tune.max_concurrent_trials=1")
    assert sweep["trials"] == 2 and sweep["best_metric"] > 0


def test_load_generator_takes_its_checkpoint(run):
    root, _, summary = run
    code = ("import json, sys, torch, ltdi_ray\n"
            "gen = ltdi_ray.load_generator(sys.argv[1])\n"
            "x = torch.linspace(-1, 1, 5).unsqueeze(-1)\n"
            "net = gen.generate(x, 1 + x - 2 * x ** 3)\n"
            "print(json.dumps({'family': type(gen.family).__name__, 'out': list(net(torch.zeros(3, 1)).shape)}))")
    res = subprocess.run([sys.executable, "-c", code, summary["generator_uri"]], cwd=EXAMPLE, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"family": "PolynomialFamily", "out": [3, 1]}
