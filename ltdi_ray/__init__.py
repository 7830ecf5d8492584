"""ltdi_ray: Lt-Di (learning to learn weight generation via trajectory diffusion) on Ray."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ltdi_ray")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"


def load_generator(uri: str, endpoint_url=None, device: str = "cpu"):
    """Load a trained generator (a checkpoint directory, local or s3://); see ``ltdi_ray.generator.api``."""
    from ltdi_ray.generator.api import load_generator as load

    return load(uri, endpoint_url, device)


__all__ = ["__version__", "load_generator"]
