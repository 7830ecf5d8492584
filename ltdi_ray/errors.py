"""User-facing errors: each carries one line that names the culprit.

The CLI prints ``str(err)`` alone (no traceback) and exits non-zero; library callers
catch :class:`LtdiError` to tell bad input apart from bugs.
"""


class LtdiError(Exception):
    """Base class for every error a user can cause and fix."""

    exit_code = 2


class ConfigError(LtdiError):
    """An invalid, unknown or inconsistent configuration value."""


class DataError(LtdiError):
    """Missing, unreadable, corrupt or mismatched data (archives, datasets, checkpoints)."""


class StorageError(LtdiError):
    """Object storage problems: unreachable endpoint, missing bucket, denied access."""
