"""Process exit codes of `stts-train train` (documented for launchers and Slurm requeue logic)."""

EXIT_OK = 0
"""Training finished all configured steps."""
EXIT_ERROR = 1
"""Unhandled error (a traceback is printed)."""
EXIT_CONFIG = 2
"""User error: invalid config, incompatible checkpoint (a message says what to change)."""
EXIT_PREEMPTED = 3
"""Stopped on SIGTERM/SIGUSR1 after writing a checkpoint; resubmit the same command to resume."""
EXIT_NONFINITE = 4
"""Loss or grad norm became NaN/inf; the last good checkpoint is left intact."""
