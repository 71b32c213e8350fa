"""Errors of the data pipeline, and bounded tolerance for bad samples.

`STTSError` (errors a user can act on) and `DataError` are defined here, the lowest layer, so
`pipelines` imports nothing from `stts_train`; `stts_train.errors` re-exports both, and
`except DataError` / `except STTSError` catch the same classes everywhere.

Bad samples: skip, count, log with the key; stop after N in a row. `MemoryError`, `ImportError`
and `KeyboardInterrupt` are never swallowed.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class STTSError(Exception):
    """Base class for errors a user can act on (the CLI prints them without a traceback)."""


class DataError(STTSError):
    """Input data is malformed or cannot be read."""


FATAL = (MemoryError, ImportError, KeyboardInterrupt, SystemExit)


class SampleError(DataError):
    """One sample cannot be read or decoded (corrupt bytes, unknown codec, no frames...)."""

    def __init__(self, kind: str, key: str, message: str) -> None:
        super().__init__(f"sample {key!r}: {kind}: {message}")
        self.kind = kind
        self.key = key


@dataclass
class FailureTracker:
    """Counts skipped samples by kind and raises after `max_consecutive` failures in a row."""

    max_consecutive: int
    where: str = "data stream"
    consecutive: int = 0
    skipped: Counter = field(default_factory=Counter)
    num_ok: int = 0

    def ok(self) -> None:
        self.consecutive = 0
        self.num_ok += 1

    def fail(self, kind: str, key: str, message: str) -> None:
        self.consecutive += 1
        self.skipped[kind] += 1
        log.warning("%s: skipping sample %r (%s): %s", self.where, key, kind, message)
        if self.consecutive > self.max_consecutive:
            raise DataError(
                f"{self.where}: {self.consecutive} consecutive bad samples (limit "
                f"data.max_consecutive_failures={self.max_consecutive}); last was {key!r} ({kind}: "
                f"{message}). Run `stts-train data verify` on the dataset, or raise the limit"
            )

    def metrics(self) -> dict[str, int]:
        out = {f"data/skipped_{k}": int(v) for k, v in sorted(self.skipped.items())}
        out["data/skipped_total"] = int(sum(self.skipped.values()))
        out["data/samples_ok"] = self.num_ok
        return out
