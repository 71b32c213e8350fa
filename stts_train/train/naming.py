"""Run names: `{config_name}-{git_sha7|nogit}-{job_id|local}`, made in one place.

The launchers (`cluster/local.py`, `cluster/slurm.py` through its batch script,
`cluster/ray_jobs.py`) name the run where they know the commit and put the name in
`$STTS_RUN_NAME`; the trainer takes that name (`current_run_name`), or makes the same one itself
when started without a launcher. Only the stdlib: the launchers import it without torch.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

RUN_NAME_ENV = "STTS_RUN_NAME"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def git_sha7(cwd: str | Path | None = None) -> str:
    """Short commit of the checkout at `cwd`, or "nogit" outside a repository / without git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=7", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "nogit"
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{7}", sha) else "nogit"


def safe_name(text: str) -> str:
    """A name usable as a Slurm job name, a Ray submission id and a directory name."""
    cleaned = _UNSAFE.sub("-", text).strip("-.")
    return cleaned or "run"


def run_name_prefix(config_name: str, sha: str | None = None) -> str:
    """`{config_name}-{git_sha7|nogit}`: the run name before the job id is known (Slurm)."""
    return f"{safe_name(config_name)}-{sha or git_sha7()}"


def run_name(config_name: str, sha: str | None = None, job_id: str | int | None = None) -> str:
    """`{config_name}-{git_sha7|nogit}-{job_id|local}`."""
    job = str(job_id) if job_id not in (None, "") else "local"
    return f"{run_name_prefix(config_name, sha)}-{safe_name(job)}"


def current_run_name(config_name: str, environ: dict[str, str] | None = None) -> str:
    """This run's name: `$STTS_RUN_NAME` when a launcher set it, else made from the checkout
    and `$SLURM_JOB_ID` / `$STTS_JOB_ID` (`local` without either)."""
    env = os.environ if environ is None else environ
    if env.get(RUN_NAME_ENV):
        return env[RUN_NAME_ENV]
    return run_name(config_name, job_id=env.get("SLURM_JOB_ID") or env.get("STTS_JOB_ID"))
