"""Preemption and requeue support shared by the trainer and the cluster launchers.

How a preempted Slurm job comes back (see cluster/templates/train.sbatch):
1. Slurm (or an operator, `scancel --signal=USR1 --batch JOB`) signals the batch shell; the shell
   forwards the signal to the srun step, so every rank receives SIGUSR1 (or SIGTERM).
2. Each rank's `signals.StopFlag` records it; at the next step boundary the ranks agree (a MAX
   all-reduce of the flag) on the same stop step, write a checkpoint and exit `EXIT_PREEMPTED`.
3. The batch shell sees that exit code and, while `SLURM_RESTART_COUNT < max_requeues`, runs
   `scontrol requeue $SLURM_JOB_ID` and exits 0. The requeued job resumes from the run dir.

Only stdlib at module level (the cluster launchers import it without torch).
"""

from __future__ import annotations

import os
import subprocess


MAX_REQUEUES_ENV = "STTS_MAX_REQUEUES"


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
