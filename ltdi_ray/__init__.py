"""ltdi_ray: Lt-Di (learning to learn weight generation via trajectory diffusion) on Ray."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ltdi_ray")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
