"""Slurm submission: render the sbatch script, submit it, query and cancel jobs.

Accounting is off on the clusters this targets (no slurmdbd), so job state comes from
`scontrol show job` (which keeps finished jobs for `MinJobAge`) with `squeue` as a fallback.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from stts_train.errors import STTSError
from stts_train.train.exit_codes import EXIT_PREEMPTED
from stts_train.train.naming import git_sha7, run_name_prefix, safe_name

TEMPLATE_PATH = Path(__file__).parent / "templates" / "train.sbatch"
FINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
    "SPECIAL_EXIT",
}


class SlurmError(STTSError):
    """A Slurm command failed or a job could not be found."""


class _SbatchTemplate(Template):
    # `$` belongs to bash in the template, so placeholders are written %%{name}.
    delimiter = "%%"


@dataclass
class SlurmJob:
    """What `stts-train submit --cluster slurm` rendered and (unless a dry run) submitted."""

    script: str
    script_path: Path | None = None
    job_id: str | None = None
    log_path: str | None = None


def ranks_per_node(cfg: Any) -> int:
    """One rank per GPU when GPUs are requested, else parallel.num_ranks spread over the nodes."""
    s = cfg.cluster.slurm
    if s.ntasks_per_node:
        return s.ntasks_per_node
    if s.gpus_per_node:
        return s.gpus_per_node
    num_ranks = cfg.parallel.num_ranks
    if num_ranks % s.nodes:
        raise SlurmError(
            f"parallel.num_ranks={num_ranks} does not split evenly over "
            f"cluster.slurm.nodes={s.nodes}; set cluster.slurm.ntasks_per_node or change one "
            "of them"
        )
    return num_ranks // s.nodes


def _q(text: str) -> str:
    return shlex.quote(str(text))


def render_script(
    cfg: Any,
    config_path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    workdir: str | Path | None = None,
) -> str:
    """The sbatch script for `cfg` (a loaded JobConfig); `config_path` is what each rank loads."""
    s = cfg.cluster.slurm
    workdir = Path(workdir or os.getcwd()).resolve()
    config_path = Path(config_path)
    if not config_path.is_absolute():
        config_path = (workdir / config_path).resolve()
    log_dir = Path(s.log_dir) if s.log_dir else Path(cfg.run_dir) / "slurm"
    if not log_dir.is_absolute():
        log_dir = workdir / log_dir
    optional = []
    if s.gpus_per_node:
        optional.append(f"--gpus-per-node={s.gpus_per_node}")
    for flag, value in (
        ("mem", s.mem),
        ("time", s.time),
        ("partition", s.partition),
        ("account", s.account),
        ("qos", s.qos),
    ):
        if value:
            optional.append(f"--{flag}={value}")
    optional.extend(s.extra_sbatch)
    env = dict(cfg.cluster.env)
    if s.gpus_per_node:
        env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    env.update(s.env)
    for key in env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise SlurmError(f"cluster env key {key!r} is not a valid environment variable name")
    command = [*cfg.cluster.entry_argv, str(config_path), *overrides]
    master_port = str(s.master_port) if s.master_port else "$((20000 + SLURM_JOB_ID % 20000))"
    values = {
        "config_path": str(config_path),
        "job_name": safe_name(cfg.name),
        "nodes": s.nodes,
        "ntasks_per_node": ranks_per_node(cfg),
        "cpus_per_task": s.cpus_per_task,
        "optional_sbatch": "".join(f"#SBATCH {o}\n" for o in optional),
        "log_dir": str(log_dir),
        "workdir": str(workdir),
        "signal_grace_s": s.signal_grace_s,
        "exit_preempted": EXIT_PREEMPTED,
        "max_requeues": s.max_requeues,
        "master_port": master_port,
        "run_name_prefix": run_name_prefix(cfg.name, git_sha7(workdir)),
        "env_exports": "\n".join(f"export {k}={_q(v)}" for k, v in env.items()),
        "setup_lines": "\n".join(s.setup),
        "srun_args": "".join(f"{_q(a)} " for a in s.srun_args),
        "command": " ".join(_q(a) for a in command),
    }
    return _SbatchTemplate(TEMPLATE_PATH.read_text()).substitute(values)


def _run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError as e:
        raise SlurmError(
            f"{argv[0]} not found: install the Slurm client (Debian: slurm-client) or run on a "
            "login node"
        ) from e
    if check and out.returncode != 0:
        raise SlurmError(f"`{' '.join(argv)}` failed ({out.returncode}): {out.stderr.strip()}")
    return out


def log_dir_of(script: str) -> Path:
    match = re.search(r"^#SBATCH --output=(.*)/%x-%j\.out$", script, re.MULTILINE)
    assert match, "rendered script has no --output line"
    return Path(match.group(1))


def submit(script: str, script_dir: str | Path) -> SlurmJob:
    """Write the script to `script_dir` and sbatch it; returns the job id and its log path."""
    script_dir = Path(script_dir)
    script_dir.mkdir(parents=True, exist_ok=True)
    log_dir_of(script).mkdir(parents=True, exist_ok=True)
    name = re.search(r"^#SBATCH --job-name=(.*)$", script, re.MULTILINE)
    path = script_dir / f"{name.group(1) if name else 'train'}.sbatch"
    path.write_text(script)
    out = _run(["sbatch", "--parsable", str(path)])
    job_id = out.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch printed {out.stdout!r}; expected a job id")
    job_name = name.group(1) if name else "train"
    return SlurmJob(
        script=script,
        script_path=path,
        job_id=job_id,
        log_path=str(log_dir_of(script) / f"{job_name}-{job_id}.out"),
    )


def job_info(job_id: str) -> dict[str, str]:
    """`scontrol show job` fields (JobState, Restarts, ExitCode, StdOut, ...); squeue fallback."""
    out = _run(["scontrol", "show", "job", "-o", str(job_id)], check=False)
    if out.returncode == 0 and out.stdout.strip():
        info: dict[str, str] = {}
        for token in out.stdout.strip().split():
            key, sep, value = token.partition("=")
            if sep:
                info[key] = value
        return info
    q = _run(["squeue", "-h", "-j", str(job_id), "-o", "%i|%j|%T|%r|%M|%N"], check=False)
    if q.returncode == 0 and q.stdout.strip():
        jid, name, state, reason, runtime, nodes = q.stdout.strip().split("|")[:6]
        return {
            "JobId": jid,
            "JobName": name,
            "JobState": state,
            "Reason": reason,
            "RunTime": runtime,
            "NodeList": nodes,
        }
    raise SlurmError(
        f"Slurm knows no job {job_id} (finished jobs are kept for MinJobAge only; "
        f"scontrol said: {out.stderr.strip() or 'nothing'})"
    )


def status(job_id: str) -> dict[str, str]:
    info = job_info(job_id)
    keys = (
        "JobId",
        "JobName",
        "JobState",
        "Reason",
        "Restarts",
        "ExitCode",
        "RunTime",
        "NodeList",
        "StdOut",
    )
    return {k: info[k] for k in keys if k in info}


def cancel(job_id: str, signal: str | None = None) -> None:
    """`scancel JOB`, or with `signal` (e.g. USR1) deliver it to the batch shell instead."""
    argv = ["scancel", str(job_id)]
    if signal:
        argv[1:1] = [f"--signal={signal}", "--batch"]
    _run(argv)
