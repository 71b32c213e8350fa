"""Run names: `{config_name}-{git_sha7|nogit}-{job_id|local}` (style lesson 4)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

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


def run_name(config_name: str, sha: str | None = None, job_id: str | int | None = None) -> str:
    """`{config_name}-{git_sha7|nogit}-{job_id|local}`."""
    sha = sha or git_sha7()
    job = str(job_id) if job_id not in (None, "") else "local"
    return f"{safe_name(config_name)}-{sha}-{safe_name(job)}"
