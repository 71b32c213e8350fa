"""Run the training entry point on this machine (`stts-train submit CONFIG --cluster local`).

The entry point itself starts `parallel.num_ranks` processes when no launcher variables are
set, so this is one subprocess with the cluster environment applied.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from stts_train.train.naming import RUN_NAME_ENV, run_name


def command(
    cfg: Any, config_path: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> list[str]:
    """The argv that `submit --cluster local` runs."""
    return [*cfg.cluster.entry_argv, str(config_path), *overrides]


def environment(cfg: Any, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update(cfg.cluster.env)
    env.setdefault(RUN_NAME_ENV, run_name(cfg.name, job_id="local"))
    # A launcher from an outer job would make the entry point join that job's process group.
    for key in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "SLURM_PROCID",
        "SLURM_NTASKS",
        "SLURM_LOCALID",
    ):
        env.pop(key, None)
    return env


def run(cfg: Any, config_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> int:
    """Run to completion with output going to this terminal; returns the entry's exit code."""
    argv = command(cfg, config_path, overrides)
    print(f"[stts] local: {' '.join(argv)}", flush=True)
    try:
        return subprocess.run(argv, env=environment(cfg), check=False).returncode
    except FileNotFoundError as e:
        raise SystemExit(
            f"entry point {argv[0]!r} not found; install the package (pip install -e .)"
        ) from e
