"""Preemption signals: SIGTERM/SIGUSR1 set a flag; the trainer agrees on a stop step across ranks.

The handler only records the signal (async-signal-safe). The ranks must agree on the stop step so
that every rank stops after the same step, writes the same checkpoint and exits with
`EXIT_PREEMPTED`. The trainer folds `StopFlag.requested` into the train step's one collective
(`stts_train/train/train_step.py`): a signal that arrives during step N is agreed at the start of
step N+1 and the run stops after that step. `StopFlag.should_stop` is the standalone agreement (a
MAX all-reduce) for loops without a train step.
"""

from __future__ import annotations

import signal
from types import FrameType

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopFlag:
    """Records a stop request from a signal (or from code, e.g. tests)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> StopFlag:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum

    def request(self, signum: int = signal.SIGTERM) -> None:
        self.signum = signum

    @property
    def requested(self) -> bool:
        """This rank's flag, not yet agreed with the other ranks (no collective)."""
        return self.signum is not None

    def should_stop(
        self, group: dist.ProcessGroup | None = None, device: torch.device | str = "cpu"
    ) -> bool:
        """True on every rank if any rank has received a stop signal (collective call)."""
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        return bool(flag.item() > 0)
