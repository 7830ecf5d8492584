"""ltdi_ray: Lt-Di (learning to learn weight generation via trajectory diffusion) on Ray.

    import ltdi_ray
    cfg = ltdi_ray.compose("experiment=smoke")          # a validated config from key=value overrides
    summary = ltdi_ray.run("pipeline", cfg)             # any stage: the CLI's summary
    gen = ltdi_ray.load_generator(summary["generator_uri"])
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ltdi_ray")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"


def load_generator(uri: str, endpoint_url=None, device: str = "cpu"):
    """Load a trained generator (a checkpoint directory, local or s3://); see ``ltdi_ray.generator.api``."""
    from ltdi_ray.generator.api import load_generator as load

    return load(uri, endpoint_url, device)


def compose(*overrides: str):
    """A validated config from ``key=value`` overrides; see ``ltdi_ray.stages``."""
    from ltdi_ray.stages import compose as compose_config

    return compose_config(*overrides)


def run(stage: str, cfg=None, *overrides: str) -> dict:
    """Run a stage (prepare, collect, train, evaluate, pipeline, tune, plot); see ``ltdi_ray.stages``."""
    from ltdi_ray.stages import run as run_stage

    return run_stage(stage, cfg, *overrides)


__all__ = ["__version__", "compose", "load_generator", "run"]
