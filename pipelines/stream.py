"""Deterministic, resumable per-rank sample streams over a built dataset.

Order (a pure function of manifest counts, seed and epoch)
-----------------------------------------------------------
1. Epoch e permutes the shards with a generator seeded by (seed, e).
2. The shards' samples are concatenated in that order (in-shard order kept), then passed
   through a shuffle buffer of `shuffle_buffer` slots driven by the same generator. The buffer
   acts on sample *indices*, so its contents at any point are replayable from (seed, epoch,
   position) and never need to be stored; decoded bytes are fetched by ranged reads using the
   per-shard index.
3. Data-parallel split: rank r of D takes elements r, r+D, r+2D, ... of the epoch sequence.
   Inside a rank, decode workers (Ray actors) take items round-robin by load; results are
   reordered by sequence number, so the order never depends on worker timing.

State and resume
----------------
`state_dict()` holds (epoch, position in this rank's share of the epoch, closed phases). The
position counts every consumed item, skipped bad samples included; it reflects samples already
*yielded*, never prefetched ones.

* Same DP size: pass each rank its own state. The rank replays exactly the remaining samples in
  the same order as an uninterrupted run.
* Different DP size: gather every rank's state, `combine_states(states)`, and pass the combined
  state to every new rank. The samples consumed by the old ranks are removed from each epoch
  ("closing a phase": old D, old positions); the remaining samples of the epoch, in epoch order,
  are split over the new ranks as in step 3. No sample is repeated or skipped; the order after
  the switch differs from an uninterrupted run at the old size. Phases nest, so any number of
  resizes work. Ranks that were already in a later epoch have that progress carried too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from pipelines.errors import DataError, FailureTracker
from pipelines.schema import MANIFEST_NAME, SCHEMA_VERSION, DecodedSample, DecodeSpec
from pipelines.storage import Storage, StorageOptions, options_from_config
from pipelines.work import Failure, WorkItem, run_work_item

log = logging.getLogger(__name__)
STATE_VERSION = 1


# ---------------------------------------------------------------------------------------------
# dataset and ordering


class Dataset:
    """A built dataset: manifest, cumulative counts and a cache of shard indices."""

    def __init__(self, root: str, opts: StorageOptions | None = None) -> None:
        self.storage = Storage(root, opts)
        if not self.storage.exists(MANIFEST_NAME):
            raise DataError(
                f"{self.storage.url(MANIFEST_NAME)} not found; build the dataset with "
                "`stts-train data build SRC DEST` first"
            )
        self.manifest = json.loads(self.storage.read(MANIFEST_NAME))
        if self.manifest.get("schema_version") != SCHEMA_VERSION:
            raise DataError(
                f"{root}: manifest schema_version {self.manifest.get('schema_version')}"
                f" != {SCHEMA_VERSION}; rebuild with `stts-train data build`"
            )
        self.shards = self.manifest["shards"]
        self.counts = np.array([s["num_samples"] for s in self.shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.num_samples = int(self.starts[-1])
        self.fingerprint = str(self.manifest["fingerprint"])
        self._index: dict[int, list[dict[str, Any]]] = {}

    def locate(self, gid: int) -> tuple[int, int]:
        shard = int(np.searchsorted(self.starts, gid, side="right") - 1)
        return shard, int(gid - self.starts[shard])

    def index(self, shard: int) -> list[dict[str, Any]]:
        if shard not in self._index:
            name = self.shards[shard]["index"]
            self._index[shard] = json.loads(self.storage.read(name))["samples"]
            if len(self._index) > 64:
                self._index.pop(next(iter(self._index)))
        return self._index[shard]


def epoch_order(counts: np.ndarray, seed: int, epoch: int, buffer: int) -> np.ndarray:
    """Global sample ids of one epoch in stream order (shard permutation + shuffle buffer)."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch)])
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    perm = rng.permutation(len(counts))
    seq = (
        np.concatenate([np.arange(starts[s], starts[s + 1]) for s in perm])
        if len(counts)
        else np.zeros(0, dtype=np.int64)
    )
    if buffer <= 1 or len(seq) <= 1:
        return seq
    picks = rng.integers(0, buffer, size=len(seq))
    out = np.empty_like(seq)
    slots = list(seq[:buffer])
    n = 0
    for i in range(buffer, len(seq)):  # emit a random slot, refill it with the next sample
        j = int(picks[i]) % len(slots)
        out[n] = slots[j]
        slots[j] = seq[i]
        n += 1
    tail = rng.permutation(len(slots))
    for j in tail:
        out[n] = slots[j]
        n += 1
    return out


def remaining(order: np.ndarray, phases: list[list[Any]]) -> np.ndarray:
    """Drop what earlier phases consumed: each phase is [dp_size, positions] (-1 = all)."""
    cur = order
    for dp_size, positions in phases:
        keep = np.ones(len(cur), dtype=bool)
        for r, pos in enumerate(positions):
            taken = np.arange(r, len(cur), dp_size)
            keep[taken if pos < 0 else taken[:pos]] = False
        cur = cur[keep]
    return cur


# ---------------------------------------------------------------------------------------------
# state helpers


def combine_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge every rank's state into one that any new data-parallel size can resume from.

    The stream half of data-parallel resharding. Training does not call it yet: the loader pins
    each rank's share of a planned window and refuses a new size
    (`stts_train.data.loader.PipelineSource.can_reshard`). It is kept, with its property test
    (no sample repeated or skipped over any chain of resizes), because the stream's state format
    (`closed_phases`) exists for it; removing it would leave that part of `SyncStream` unreachable.
    """
    if not states:
        raise DataError("combine_states needs the stream state of every data-parallel rank")
    base = states[0]
    dp_size = base["dp_size"]
    for s in states:
        if s.get("kind") != "rank":
            raise DataError("combine_states takes per-rank states (kind='rank')")
        for k in ("fingerprint", "seed", "shuffle_buffer", "dp_size"):
            if s[k] != base[k]:
                raise DataError(f"rank states disagree on {k}: {s[k]!r} vs {base[k]!r}")
    ranks = sorted(s["dp_rank"] for s in states)
    if ranks != list(range(dp_size)):
        raise DataError(f"combine_states needs ranks 0..{dp_size - 1} exactly once, got {ranks}")
    closed: dict[int, list[list[Any]]] = {}
    for s in states:
        for e, phases in s["closed_phases"].items():
            if int(e) in closed and closed[int(e)] != phases:
                raise DataError(f"rank states disagree on the history of epoch {e}")
            closed[int(e)] = phases
    e_min = min(s["epoch"] for s in states)
    e_max = max(s["epoch"] for s in states)
    by_rank = {s["dp_rank"]: s for s in states}
    for e in range(e_min, e_max + 1):
        positions = []
        for r in range(dp_size):
            s = by_rank[r]
            positions.append(s["position"] if s["epoch"] == e else (-1 if s["epoch"] > e else 0))
        if any(p != 0 for p in positions):
            closed[e] = list(closed.get(e, [])) + [[dp_size, positions]]
    return {
        "version": STATE_VERSION,
        "kind": "combined",
        "fingerprint": base["fingerprint"],
        "seed": base["seed"],
        "shuffle_buffer": base["shuffle_buffer"],
        "epoch": e_min,
        "closed_phases": {str(e): p for e, p in sorted(closed.items()) if e >= e_min},
    }


# ---------------------------------------------------------------------------------------------
# streams


class SyncStream:
    """In-process stream: decodes in the calling thread. Same order and state as RayStream."""

    def __init__(
        self,
        cfg: Any,
        spec: DecodeSpec,
        dp_rank: int,
        dp_size: int,
        state: dict[str, Any] | None = None,
    ) -> None:
        if not 0 <= dp_rank < dp_size:
            raise DataError(f"dp_rank={dp_rank} must be in [0, dp_size={dp_size})")
        if not cfg.path:
            raise DataError(
                "data.path is empty; set it to a directory or s3:// URL written by "
                "`stts-train data build`"
            )
        self.cfg, self.spec = cfg, spec
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.dataset = Dataset(cfg.path, options_from_config(cfg))
        if self.dataset.num_samples == 0:
            raise DataError(f"{cfg.path}: the dataset has no samples")
        self.epoch, self.position = 0, 0
        self.closed: dict[int, list[list[Any]]] = {}
        if state is not None:
            self._load(state)
        self.tracker = FailureTracker(cfg.max_consecutive_failures, where=f"data rank {dp_rank}")
        self._order_cache: tuple[int, np.ndarray] | None = None
        self._plan = self._make_plan()
        self._seq = 0
        self._closed_stream = False

    # -- state ---------------------------------------------------------------------------
    def _load(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise DataError(
                f"data stream state version {state.get('version')!r}, expected "
                f"{STATE_VERSION}; start the data stream fresh"
            )
        if state["fingerprint"] != self.dataset.fingerprint:
            raise DataError(
                f"the checkpoint's data fingerprint {state['fingerprint'][:12]} does not match "
                f"{self.cfg.path} ({self.dataset.fingerprint[:12]}); point data.path at the "
                "dataset the run was started with, or start the data stream fresh"
            )
        for k, mine in (("seed", self.cfg.seed), ("shuffle_buffer", self.cfg.shuffle_buffer)):
            if state[k] != mine:
                raise DataError(
                    f"checkpoint has data.{k}={state[k]}, config has {mine}; they "
                    "must match to resume the same stream"
                )
        if state["kind"] == "rank":
            if (state["dp_size"], state["dp_rank"]) != (self.dp_size, self.dp_rank):
                raise DataError(
                    f"state is for rank {state['dp_rank']} of {state['dp_size']}, this is rank "
                    f"{self.dp_rank} of {self.dp_size}; when the data-parallel size changes pass "
                    "pipelines.stream.combine_states(all ranks' states) to every rank"
                )
            self.position = int(state["position"])
        self.epoch = int(state["epoch"])
        self.closed = {int(e): p for e, p in state["closed_phases"].items()}

    def state_dict(self) -> dict[str, Any]:
        """Position after the last yielded sample (prefetched samples are not counted)."""
        return {
            "version": STATE_VERSION,
            "kind": "rank",
            "fingerprint": self.dataset.fingerprint,
            "seed": self.cfg.seed,
            "shuffle_buffer": self.cfg.shuffle_buffer,
            "dp_size": self.dp_size,
            "dp_rank": self.dp_rank,
            "epoch": self.epoch,
            "position": self.position,
            "closed_phases": {str(e): p for e, p in self.closed.items() if e >= self.epoch},
            "cursor": self._cursor(),
            "buffer": {
                "kind": "index-shuffle",
                "size": self.cfg.shuffle_buffer,
                "replay": "contents are a pure function of (seed, epoch, position)",
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._load(state)
        self._plan = self._make_plan()

    def metrics(self) -> dict[str, int]:
        return self.tracker.metrics()

    # -- planning ------------------------------------------------------------------------
    def _share(self, epoch: int) -> np.ndarray:
        if self._order_cache is None or self._order_cache[0] != epoch:
            order = epoch_order(self.dataset.counts, self.cfg.seed, epoch, self.cfg.shuffle_buffer)
            self._order_cache = (epoch, order)
        rest = remaining(self._order_cache[1], self.closed.get(epoch, []))
        return rest[self.dp_rank :: self.dp_size]

    def _cursor(self) -> dict[str, Any] | None:
        try:
            share = self._share(self.epoch)
        except Exception:  # noqa: BLE001 - informational only
            return None
        if self.position >= len(share):
            return None
        shard, member = self.dataset.locate(int(share[self.position]))
        return {"shard": self.dataset.shards[shard]["name"], "offset": member}

    def _make_plan(self) -> Iterator[WorkItem]:
        epoch, position = self.epoch, self.position
        while self.cfg.num_epochs is None or epoch < self.cfg.num_epochs:
            share = self._share(epoch)
            if len(share) == 0 and not self.closed.get(epoch) and self.cfg.num_epochs is None:
                raise DataError(
                    f"rank {self.dp_rank} of {self.dp_size} gets no samples from "
                    f"{self.dataset.num_samples}; use fewer data-parallel ranks"
                )
            for i in range(position, len(share)):
                yield self._item(epoch, i, int(share[i]))
            epoch, position = epoch + 1, 0

    def _item(self, epoch: int, position: int, gid: int) -> WorkItem:
        shard, member = self.dataset.locate(gid)
        entry = self.dataset.index(shard)[member]
        self._seq += 1
        return WorkItem(
            seq=self._seq,
            epoch=epoch,
            position=position,
            gid=gid,
            key=entry["key"],
            shard=self.dataset.shards[shard]["name"],
            members=entry["members"],
            start=int(entry["start"]),
            end=int(entry["end"]),
        )

    def _advance(self, item: WorkItem) -> None:
        if item.epoch != self.epoch:
            self.closed = {e: p for e, p in self.closed.items() if e >= item.epoch}
        self.epoch, self.position = item.epoch, item.position + 1

    def _accept(self, item: WorkItem, result: DecodedSample | Failure) -> DecodedSample | None:
        self._advance(item)
        if isinstance(result, Failure):
            self.tracker.fail(result.kind, result.key, result.message)
            return None
        self.tracker.ok()
        return result

    # -- iteration -----------------------------------------------------------------------
    def __iter__(self) -> SyncStream:
        return self

    def __next__(self) -> DecodedSample:
        while True:
            item = next(self._plan)
            result = run_work_item(
                item, self.dataset.storage, self.spec, self.cfg.decoder, self.cfg.decode_threads
            )
            sample = self._accept(item, result)
            if sample is not None:
                return sample

    def close(self) -> None:
        self._closed_stream = True

    def __enter__(self) -> SyncStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RayStream(SyncStream):
    """Decoding in Ray actors feeding a bounded per-rank queue; results reordered by sequence."""

    POLL_S = 1.0

    def __init__(
        self,
        cfg: Any,
        spec: DecodeSpec,
        dp_rank: int,
        dp_size: int,
        state: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(cfg, spec, dp_rank, dp_size, state)
        from pipelines.ray_workers import make_decode_actor, ray_session

        self._stack = contextlib.ExitStack()
        self._actors: list[Any] = []
        self._queue: Any = None
        try:
            ray = self._stack.enter_context(
                ray_session(
                    cfg.ray_address,
                    num_cpus=max(2, int(cfg.num_decode_actors * cfg.actor_num_cpus) + 1),
                )
            )
            from ray.util.queue import Queue

            self._ray = ray
            self._queue = Queue(maxsize=cfg.queue_size, actor_options={"num_cpus": 0})
            self._actors = [
                make_decode_actor(
                    cfg.actor_num_cpus, self.dataset.storage, spec, cfg.decoder, cfg.decode_threads
                )
                for _ in range(cfg.num_decode_actors)
            ]
        except BaseException:
            self.close()
            raise
        self._load_by_actor = [0] * len(self._actors)
        self._calls: dict[Any, int] = {}
        self._pending: dict[int, WorkItem] = {}
        self._results: dict[int, Any] = {}
        self._next_seq = self._seq + 1
        self._plan_done = False

    def actor_pids(self) -> list[int]:
        return [int(p) for p in self._ray.get([a.pid.remote() for a in self._actors])]

    def _dispatch(self) -> None:
        while not self._plan_done and self._seq - self._next_seq + 1 < self.cfg.queue_size:
            try:
                item = next(self._plan)
            except StopIteration:
                self._plan_done = True
                return
            a = min(range(len(self._actors)), key=self._load_by_actor.__getitem__)
            self._load_by_actor[a] += 1
            self._pending[item.seq] = item
            self._calls[self._actors[a].process.remote([item], self._queue)] = a

    def _check_actors(self) -> None:
        if not self._calls:
            return
        done, _ = self._ray.wait(list(self._calls), num_returns=len(self._calls), timeout=0)
        for ref in done:
            self._load_by_actor[self._calls.pop(ref)] -= 1
            try:
                self._ray.get(ref)
            except Exception as e:  # an actor crashed: the run cannot continue exactly
                raise DataError(f"decode actor failed: {type(e).__name__}: {e}") from e

    def __next__(self) -> DecodedSample:
        from ray.util.queue import Empty

        if self._closed_stream:
            raise StopIteration
        while True:
            self._dispatch()
            if self._next_seq not in self._pending:
                raise StopIteration
            while self._next_seq not in self._results:
                try:
                    seq, result = self._queue.get(timeout=self.POLL_S)
                    self._results[seq] = result
                except Empty:
                    pass
                self._check_actors()
            result = self._results.pop(self._next_seq)
            item = self._pending.pop(self._next_seq)
            self._next_seq += 1
            self._check_actors()
            sample = self._accept(item, result)
            if sample is not None:
                return sample

    def close(self) -> None:
        if getattr(self, "_closed_stream", False) and not getattr(self, "_actors", None):
            return
        self._closed_stream = True
        ray = getattr(self, "_ray", None)
        if ray is not None:
            for actor in self._actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor, no_restart=True)
            if self._queue is not None:
                with contextlib.suppress(Exception):
                    self._queue.shutdown(force=True)
        self._actors = []
        self._queue = None
        stack = getattr(self, "_stack", None)
        if stack is not None:
            stack.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def open_stream(
    cfg: Any, spec: DecodeSpec, dp_rank: int, dp_size: int, state: dict[str, Any] | None = None
) -> SyncStream:
    """The training entry point: a per-rank iterator of DecodedSample with state_dict/close.

    `cfg.loader` picks `RayStream` (default) or `SyncStream`; both give the same samples in the
    same order and the same states. `state` is this rank's `state_dict()` (same DP size) or
    `combine_states(...)` of every old rank (any DP size).
    """
    cls = RayStream if cfg.loader == "ray" else SyncStream
    return cls(cfg, spec, dp_rank, dp_size, state)


def wait_for(predicate: Any, timeout_s: float, poll_s: float = 0.1) -> bool:
    """Poll `predicate` until true or `timeout_s` elapses (used for clean-shutdown checks)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return bool(predicate())
