"""Fault injection for resilience tests (never set in normal runs).

STTS_FAULT_KILL_AT_STEP=N          every rank's process group gets SIGKILL after step N finishes
STTS_FAULT_KILL_IN_CHECKPOINT=N    SIGKILL while the checkpoint of step N is half written (shards
                                   on disk under the temporary name, not yet committed)
"""

from __future__ import annotations

import os
import signal


def _want(var: str, step: int) -> bool:
    value = os.environ.get(var)
    return value is not None and value.strip() != "" and int(value) == step


def kill_everything() -> None:
    """SIGKILL this process's group (the launcher and all ranks it started)."""
    os.killpg(os.getpgid(0), signal.SIGKILL)


def maybe_kill_after_step(step: int) -> None:
    if _want("STTS_FAULT_KILL_AT_STEP", step):
        import torch.distributed as dist

        dist.barrier()  # every rank has finished (and logged) the step
        kill_everything()


def maybe_kill_in_checkpoint(step: int) -> None:
    if _want("STTS_FAULT_KILL_IN_CHECKPOINT", step):
        kill_everything()
