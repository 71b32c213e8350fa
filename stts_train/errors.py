"""Exception hierarchy. Every message says what was expected, what was found and what to change."""


class STTSError(Exception):
    """Base class for errors a user can act on."""


class ConfigError(STTSError, ValueError):
    """A configuration file or override is invalid."""


class DataError(STTSError):
    """Input data is malformed or cannot be read."""


class CheckpointError(STTSError):
    """A checkpoint is missing, corrupt or incompatible with the run."""


class LayoutError(STTSError, ValueError):
    """Model inputs do not agree with each other (e.g. features vs placeholders)."""
