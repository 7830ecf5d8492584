"""Progress bars for the long steps (tqdm on stderr; hidden when stderr is not a terminal)."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def watched() -> bool:
    """Whether someone watches this process's console live (a terminal or a notebook; not logs or CI)."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def progress(total: int, desc: str, unit: str = "it") -> tqdm:
    """A bar for ``total`` units of work on stderr (or a notebook's cell), where someone watches it."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, disable=not watched(),
                leave=False)


class RemoteBar:
    """A bar drawn on the driver's console for work in a Ray worker (``ray.experimental.tqdm_ray``), or
    nothing when ``show`` is false (the driver's console is not watched: the worker cannot tell)."""

    def __init__(self, show: bool, total: int, desc: str, unit: str = "step"):
        from ray.experimental.tqdm_ray import tqdm as remote_tqdm

        self.bar = remote_tqdm(total=total, desc=desc, unit=unit) if show else None

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
