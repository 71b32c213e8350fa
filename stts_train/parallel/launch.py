"""Process launch: join an existing launcher's world, or start the local ranks ourselves.

Recognised environments (first match wins):
- torchrun / deepspeed launcher: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT;
- Slurm (srun, one task per rank): SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; MASTER_ADDR
  from the environment or the first host of SLURM_JOB_NODELIST, MASTER_PORT from the job id.
Otherwise `spawn_local` starts `parallel.num_ranks` copies of the same command with the
torchrun variables set, forwards SIGTERM/SIGUSR1 to them, and kills the survivors if one rank
fails (so no rank waits forever in a collective).

Backend: NCCL when CUDA is available, gloo on CPU (`parallel.backend` may force one).
Only the stdlib at module level: `cluster/` and the test fixtures import `free_port` from here.
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class RankEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def _first_slurm_host(nodelist: str) -> str:
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    head = nodelist.split(",")[0]
    if "[" in head:  # node[01-04] -> node01
        prefix, rest = head.split("[", 1)
        head = prefix + rest.split("-")[0].split(",")[0].rstrip("]")
    return head


def detect_env(environ: dict[str, str] | None = None) -> RankEnv | None:
    """The rank layout from a launcher's environment variables, or None if there is none."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return RankEnv(
            int(env["RANK"]),
            int(env["WORLD_SIZE"]),
            int(env.get("LOCAL_RANK", "0")),
            env.get("MASTER_ADDR", "127.0.0.1"),
            int(env.get("MASTER_PORT", "29500")),
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and int(env["SLURM_NTASKS"]) > 1:
        addr = env.get("MASTER_ADDR") or _first_slurm_host(
            env.get("SLURM_JOB_NODELIST", "127.0.0.1")
        )
        port = int(env.get("MASTER_PORT") or 10000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)
        return RankEnv(
            int(env["SLURM_PROCID"]),
            int(env["SLURM_NTASKS"]),
            int(env.get("SLURM_LOCALID", "0")),
            addr,
            port,
        )
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that was free a moment ago ("" = every interface, for a rendezvous
    other machines connect to). The one port picker of the repo: launchers, test servers, the
    local Slurm and S3 servers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def init_distributed(env: RankEnv, backend: str = "auto", timeout_min: int = 30) -> str:
    """Initialise the default process group for `env`; returns the backend used."""
    import torch
    import torch.distributed as dist

    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    os.environ.update(
        RANK=str(env.rank),
        WORLD_SIZE=str(env.world_size),
        LOCAL_RANK=str(env.local_rank),
        MASTER_ADDR=env.master_addr,
        MASTER_PORT=str(env.master_port),
    )
    if backend == "nccl":
        torch.cuda.set_device(env.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            rank=env.rank,
            world_size=env.world_size,
            timeout=datetime.timedelta(minutes=timeout_min),
        )
    return backend


def shutdown_distributed() -> None:
    """barrier + destroy (without it some gloo runs abort after finishing; notes/stack.md)."""
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def spawn_local(argv: list[str], num_ranks: int, extra_env: dict[str, str] | None = None) -> int:
    """Run `python -m stts_train.cli *argv` as `num_ranks` local ranks; returns the exit code.

    The exit code is the first non-zero code of any rank (so EXIT_PREEMPTED propagates), else 0.
    """
    port = free_port()
    procs: list[subprocess.Popen] = []
    for rank in range(num_ranks):
        env = dict(os.environ, **(extra_env or {}))
        env.update(
            RANK=str(rank),
            WORLD_SIZE=str(num_ranks),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(num_ranks),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        procs.append(subprocess.Popen([sys.executable, "-m", "stts_train.cli", *argv], env=env))

    def forward(signum: int, frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {
        s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
    }
    first_failure: int | None = None
    try:
        while any(p.poll() is None for p in procs):
            for p in procs:
                code = p.poll()
                if code not in (None, 0) and first_failure is None:
                    first_failure = code
                    # give peers a moment to finish the same clean exit (e.g. preemption)
                    deadline = time.monotonic() + 60
                    while any(q.poll() is None for q in procs) and time.monotonic() < deadline:
                        time.sleep(0.2)
                    for q in procs:
                        if q.poll() is None:
                            q.kill()
            time.sleep(0.2)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    codes = [p.wait() for p in procs]
    if first_failure is None:
        first_failure = next((c for c in codes if c != 0), 0)
    return first_failure
