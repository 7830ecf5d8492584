"""GPU tier: the batched inner loop on CUDA agrees with the CPU (run with ``pytest -m gpu``)."""

import math

import numpy as np
import pytest
import torch

from ltdi_ray.config import load_config
from ltdi_ray.pipelines.collect import make_batcher

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")


@pytest.mark.parametrize("family", ["sinusoid", "omniglot"])
def test_cuda_trajectories_match_cpu(family, omniglot_root):
    extra = ["task=omniglot", f"task.root={omniglot_root}", "task.channels=8"] if family == "omniglot" else []
    cfg = load_config([*extra, "trajectory.steps=20", "trajectory.save_every=10", "trajectory.theta0=shared"])
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # compare full float32
    cpu = make_batcher(cfg, "cpu")(np.arange(16))
    gpu = make_batcher(cfg, "cuda")(np.arange(16))
    # float32 sums in another order on the GPU (cuDNN picks its own conv algorithms); Adam's
    # m / sqrt(v) amplifies that near zero gradients: measured 3e-3 on the conv net, 20 steps.
    np.testing.assert_allclose(gpu["checkpoints"], cpu["checkpoints"], atol=2e-3 if family == "sinusoid" else 1e-2)
    np.testing.assert_allclose(gpu["query_loss"], cpu["query_loss"], rtol=2e-2, atol=2e-3)


def test_the_smoke_pipeline_runs_on_cuda_through_ray(ray_session, tmp_path):
    """Collectors and the Train worker each hold the GPU through Ray; evaluate scores the result."""
    import ltdi_ray

    if ray_session.cluster_resources().get("GPU", 0) < 1:
        pytest.skip("the session's Ray has no GPU")
    cfg = ltdi_ray.compose("experiment=smoke", f"storage.uri={tmp_path}", "collect.gpus_per_actor=1",
                           "collect.num_actors=1", "train.use_gpu=true", "train.cpus_per_worker=1")
    summary = ltdi_ray.run("pipeline", cfg)
    assert summary["collect"]["tasks"] == 64 and summary["train"]["epochs"] == 2
    assert all(math.isfinite(v) for v in summary["evaluate"]["ltdi"].values())
