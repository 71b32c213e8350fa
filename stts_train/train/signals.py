"""Preemption signals: SIGTERM/SIGUSR1 set a flag; the trainer agrees on a stop step across ranks.

The handler only records the signal (async-signal-safe). `StopFlag.should_stop(group)` all-reduces
the local flag with MAX every step so every rank stops after the same step, writes the same
checkpoint and exits with `EXIT_PREEMPTED`.
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

    def should_stop(
        self, group: dist.ProcessGroup | None = None, device: torch.device | str = "cpu"
    ) -> bool:
        """True on every rank if any rank has received a stop signal (collective call)."""
        flag = torch.tensor([1.0 if self.signum is not None else 0.0], device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        return bool(flag.item() > 0)
