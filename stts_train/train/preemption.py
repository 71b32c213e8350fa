"""Preemption and requeue support shared by the trainer and the cluster launchers.

How a preempted Slurm job comes back (see cluster/templates/train.sbatch):
1. Slurm (or an operator, `scancel --signal=USR1 --batch JOB`) signals the batch shell; the shell
   forwards the signal to the srun step, so every rank receives SIGUSR1 (or SIGTERM).
2. Each rank's `PreemptionWatcher` records it; at the next step boundary the ranks agree (a MAX
   all-reduce of the flag) on the same stop step, write a checkpoint and exit `EXIT_PREEMPTED`.
3. The batch shell sees that exit code and, while `SLURM_RESTART_COUNT < max_requeues`, runs
   `scontrol requeue $SLURM_JOB_ID` and exits 0. The requeued job resumes from the run dir.

Only stdlib at module level; torch is imported inside `agree` when ranks need to vote.
"""

from __future__ import annotations

import os
import signal
import subprocess
from types import FrameType

try:  # owned by the trainer; the fallback keeps the cluster code usable on its own
    from stts_train.train.exit_codes import EXIT_PREEMPTED
except ImportError:  # pragma: no cover - until exit_codes.py lands
    EXIT_PREEMPTED = 3

PREEMPTION_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
MAX_REQUEUES_ENV = "STTS_MAX_REQUEUES"


class PreemptionWatcher:
    """Turns SIGUSR1/SIGTERM into a flag that the training loop polls at step boundaries."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def install(self, signals: tuple[int, ...] = PREEMPTION_SIGNALS) -> PreemptionWatcher:
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def agree(self) -> bool:
        """True on every rank if any rank was signalled (a collective: call it on all ranks)."""
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self.requested
        flag = torch.tensor([1 if self.requested else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def restart_count(env: dict[str, str] | None = None) -> int:
    """How often Slurm has restarted this job (`SLURM_RESTART_COUNT`, 0 when unset)."""
    env = os.environ if env is None else env
    try:
        return int(env.get("SLURM_RESTART_COUNT", "0") or 0)
    except ValueError:
        return 0


def max_requeues(env: dict[str, str] | None = None, default: int = 3) -> int:
    env = os.environ if env is None else env
    try:
        return int(env.get(MAX_REQUEUES_ENV, default))
    except ValueError:
        return default


def is_requeued(env: dict[str, str] | None = None) -> bool:
    """True when this is a requeued run of a Slurm job (it should resume, not start over)."""
    return restart_count(env) > 0


def can_requeue(env: dict[str, str] | None = None) -> bool:
    """True inside a Slurm job whose requeue budget is not spent yet."""
    env = os.environ if env is None else env
    return "SLURM_JOB_ID" in env and restart_count(env) < max_requeues(env)


def requeue_self(env: dict[str, str] | None = None) -> bool:
    """`scontrol requeue $SLURM_JOB_ID`; returns False outside Slurm or when the budget is spent."""
    env = os.environ if env is None else env
    if not can_requeue(env):
        return False
    out = subprocess.run(
        ["scontrol", "requeue", env["SLURM_JOB_ID"]], capture_output=True, text=True, check=False
    )
    return out.returncode == 0
