"""Test helpers: run a function in N gloo processes with a timeout and collect the results.

    results = run_distributed_test(worker_fn, world_size=2, args=(cfg,), timeout_s=120)

`worker_fn(*args)` runs in a fresh (spawned) process per rank with RANK/WORLD_SIZE/LOCAL_RANK/
MASTER_ADDR/MASTER_PORT set and the default process group initialised on gloo; its return value
(picklable) is collected per rank. A rank that raises fails the call with that rank's traceback;
a run that exceeds `timeout_s` (a hang) kills every rank and raises TimeoutError.
"""

from __future__ import annotations

import os
import pickle
import queue as queue_mod
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp

from stts_train.parallel.launch import free_port


def _entry(
    fn: Callable[..., Any],
    rank: int,
    world_size: int,
    port: int,
    args: tuple,
    kwargs: dict,
    env: dict[str, str],
    queue: Any,
) -> None:
    os.environ.update(env)
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        result = fn(*args, **kwargs)
        # Plain pickle copies tensor data into bytes. torch.multiprocessing's queue would instead
        # pass tensors as shared-memory file descriptors served by this process, which breaks
        # when the rank exits before the parent unpickles them (FileNotFoundError in CI).
        queue.put((rank, "ok", pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)))
    except BaseException:  # noqa: BLE001 - report everything to the parent
        queue.put((rank, "error", traceback.format_exc()))
        queue.close()
        queue.join_thread()  # flush the report before the hard exit
        os._exit(1)
    try:
        dist.barrier()
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001, S110 - teardown after the result was reported
        pass


def run_distributed_test(
    fn: Callable[..., Any],
    world_size: int,
    args: tuple = (),
    timeout_s: float = 300.0,
    env: dict[str, str] | None = None,
    kwargs: dict[str, Any] | None = None,
) -> list[Any]:
    """Run `fn(*args, **kwargs)` on `world_size` gloo ranks; return the per-rank results (rank
    order)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(
            target=_entry,
            args=(fn, rank, world_size, port, args, dict(kwargs or {}), dict(env or {}), queue),
            daemon=False,
        )
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(results) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"distributed test timed out after {timeout_s:.0f}s (possible hang); ranks "
                    f"that returned: {sorted(results)} of {world_size}"
                )
            try:
                rank, status, payload = queue.get(timeout=min(remaining, 1.0))
            except queue_mod.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead and all(p.exitcode is not None for p in procs):
                    raise RuntimeError(
                        f"ranks exited without a result (exit codes {[p.exitcode for p in procs]})"
                    ) from None
                continue
            if status == "error":
                raise RuntimeError(f"rank {rank} failed:\n{payload}")
            results[rank] = pickle.loads(payload)  # noqa: S301 - bytes from our own child process
        for p in procs:
            p.join(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
    return [results[r] for r in range(world_size)]
