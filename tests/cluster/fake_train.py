"""Stand-in for `stts-train train` with the same launch, checkpoint and exit-code contract.

    python tests/cluster/fake_train.py CONFIG [key=value ...]

- Ranks: torchrun-style RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT if set, else
  SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID + MASTER_ADDR/MASTER_PORT, else it starts
  `parallel.num_ranks` local copies of itself.
- Trains a tiny linear model with gloo (gradients averaged by all-reduce), deterministic per
  step, for `train.num_steps` steps; checkpoints to `<run_dir>/checkpoints/step-N.pt` every
  step and resumes from the newest one.
- On SIGUSR1/SIGTERM the ranks agree on a stop step, checkpoint and exit EXIT_PREEMPTED.
`FAKE_TRAIN_STEP_S` (default 0.25) slows each step so tests can preempt mid-run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from stts_train.config import load_config
from stts_train.parallel.launch import free_port
from stts_train.train.exit_codes import EXIT_PREEMPTED
from stts_train.train.signals import StopFlag


def _spawn_local(num_ranks: int) -> int:
    port = free_port()
    procs = []
    for rank in range(num_ranks):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": str(num_ranks),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        procs.append(subprocess.Popen([sys.executable, *sys.argv], env=env))
    codes = [p.wait() for p in procs]
    return max(codes)


def _rank_env() -> tuple[int, int] | None:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"])
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "MASTER_ADDR" in env:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
    return None


def _latest(ckpt_dir: Path) -> Path | None:
    steps = sorted(ckpt_dir.glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    return steps[-1] if steps else None


def main() -> int:
    config_path, overrides = sys.argv[1], sys.argv[2:]
    cfg = load_config(config_path, overrides)
    ranks = _rank_env()
    if ranks is None:
        return _spawn_local(cfg.parallel.num_ranks)
    rank, world = ranks
    watcher = StopFlag().install()

    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)
    run_dir = Path(cfg.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()

    torch.manual_seed(cfg.train.seed)
    weight = torch.randn(8, 1)
    start = 0
    latest = _latest(ckpt_dir)
    if latest is not None:
        state = torch.load(latest, weights_only=True)
        weight, start = state["weight"], int(state["step"])
        restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
        print(f"[rank{rank}] resumed from {latest.name} (restart {restarts})", flush=True)

    def save(step: int) -> None:
        if rank == 0:
            tmp = ckpt_dir / f".step-{step}.pt.tmp"
            torch.save({"weight": weight, "step": step}, tmp)
            os.replace(tmp, ckpt_dir / f"step-{step}.pt")
        dist.barrier()

    step_s = float(os.environ.get("FAKE_TRAIN_STEP_S", "0.25"))
    for step in range(start, cfg.train.num_steps):
        if watcher.should_stop():
            save(step)
            print(
                f"[rank{rank}] preempted (SIG {watcher.signum}); checkpointed step {step}",
                flush=True,
            )
            dist.destroy_process_group()
            return EXIT_PREEMPTED
        g = torch.Generator().manual_seed(cfg.train.seed * 100003 + step * 17 + rank)
        x = torch.randn(4, 8, generator=g)
        y = x.sum(dim=1, keepdim=True)
        w = weight.clone().requires_grad_(True)
        loss = ((x @ w - y) ** 2).mean()
        loss.backward()
        grad = w.grad.detach()
        dist.all_reduce(grad)
        weight = weight - 0.05 * grad / world
        save(step + 1)
        if rank == 0:
            print(f"[rank0] step {step + 1} loss {loss.item():.6f}", flush=True)
        time.sleep(step_s)
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        print(f"[rank0] done: {cfg.train.num_steps} steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
