"""Exception hierarchy. Every message says what was expected, what was found and what to change.

`STTSError` and `DataError` live in `pipelines/errors.py` (the data pipeline imports nothing from
`stts_train`) and are re-exported here; import them from either place.
"""

from pipelines.errors import DataError, STTSError

__all__ = ["CheckpointError", "ConfigError", "DataError", "LayoutError", "STTSError"]


class ConfigError(STTSError, ValueError):
    """A configuration file or override is invalid."""


class CheckpointError(STTSError):
    """A checkpoint is missing, corrupt or incompatible with the run."""


class LayoutError(STTSError, ValueError):
    """Model inputs do not agree with each other (e.g. features vs placeholders)."""
