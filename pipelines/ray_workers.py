"""Ray plumbing: session management, probe tasks and decode actors with a bounded queue.

Decode actors take work items (a sample's shard, byte range, sequence number), fetch the bytes
with ranged reads, decode them and push `(seq, result)` into the rank's bounded
`ray.util.queue.Queue`. The consumer (`pipelines.stream.RayStream`) hands out at most
`queue_size` items beyond the next sample it must yield, so the queue can never fill up with
samples the consumer cannot use yet (no deadlock), memory stays bounded, and a fast actor cannot
run ahead of a slow one by more than the window (backpressure). Results are reordered by
sequence number, so what a rank sees never depends on actor timing.

Embedded default: `ray_session(None)` starts an in-process local Ray and shuts it down on exit;
with an address it connects to that cluster and only disconnects. Sessions nest: an already
initialised Ray is reused and left running.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from pipelines.work import run_work_item

log = logging.getLogger(__name__)


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Use the running Ray, else start a local one (address None) or connect to `address`."""
    import ray

    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "configure_logging": False,
            "log_to_driver": True,
        }
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(
                num_cpus=num_cpus or os.cpu_count() or 1,
                object_store_memory=256 * 1024 * 1024,
                **kwargs,
            )
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def probe_paths(paths: list[str]) -> list[dict[str, Any]]:
    """Probe video files (runs inside a Ray task); errors come back as {'error': message}."""
    from pipelines.probe import probe_file

    out = []
    for path in paths:
        try:
            out.append(probe_file(path))
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - reported to the driver, which names the file
            out.append({"error": str(e)})
    return out


def probe_in_ray(paths: list[str], num_workers: int, progress: Any = None) -> list[dict[str, Any]]:
    """Probe `paths` with at most `num_workers` Ray tasks in flight; keeps input order."""
    import ray

    task = ray.remote(num_cpus=1, max_retries=2)(probe_paths)
    chunk = max(1, min(16, len(paths) // (num_workers * 4) or 1))
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    results: dict[int, list[dict[str, Any]]] = {}
    pending: dict[Any, int] = {}
    next_chunk = 0
    while next_chunk < len(chunks) or pending:
        while next_chunk < len(chunks) and len(pending) < num_workers:
            pending[task.remote(chunks[next_chunk])] = next_chunk
            next_chunk += 1
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            i = pending.pop(ref)
            results[i] = ray.get(ref)
            if progress is not None:
                progress.update(len(results[i]))
    return [r for i in range(len(chunks)) for r in results[i]]


class DecodeWorker:
    """Body of the decode actor (also usable in-process): fetch, decode, report per item."""

    def __init__(self, storage: Any, spec: Any, backend: str, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.storage = storage
        self.spec = spec
        self.backend = backend
        self.threads = threads

    def process(self, items: list[Any], queue: Any = None) -> list[Any]:
        """Decode work items; push (seq, result) to `queue` when given, else return them."""
        out = []
        for item in items:
            result = run_work_item(item, self.storage, self.spec, self.backend, self.threads)
            if queue is not None:
                queue.put((item.seq, result))  # blocks when full: backpressure
            else:
                out.append((item.seq, result))
        return out

    def pid(self) -> int:
        return os.getpid()


def make_decode_actor(num_cpus: float, storage: Any, spec: Any, backend: str, threads: int) -> Any:
    import ray

    actor_cls = ray.remote(num_cpus=num_cpus, max_restarts=0)(DecodeWorker)
    return actor_cls.remote(storage, spec, backend, threads)
