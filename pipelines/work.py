"""One unit of decode work: a sample's byte range in a shard, fetched and decoded.

Shared by the in-process stream (`pipelines.stream.SyncStream`) and the Ray decode actors
(`pipelines.ray_workers.DecodeWorker`), which is why it is neither of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pipelines.decode import decode_sample
from pipelines.errors import FATAL, DataError, SampleError
from pipelines.schema import DecodedSample, DecodeSpec, SampleRecord, SourceInfo
from pipelines.storage import Storage


@dataclass(frozen=True)
class WorkItem:
    seq: int
    epoch: int
    position: int
    gid: int
    key: str
    shard: str
    members: dict[str, list[int]]
    start: int
    end: int


@dataclass(frozen=True)
class Failure:
    kind: str
    key: str
    message: str


def run_work_item(
    item: WorkItem, storage: Storage, spec: DecodeSpec, backend: str, threads: int
) -> DecodedSample | Failure:
    """Fetch and decode one sample; bad data comes back as a Failure (never raised)."""
    try:
        if "json" not in item.members:
            raise SampleError("missing_json", item.key, f"no {item.key}.json in {item.shard}")
        videos = [e for e in item.members if e != "json"]
        if not videos:
            raise SampleError("missing_video", item.key, f"no video member in {item.shard}")
        try:
            blob = storage.read(item.shard, item.start, item.end)
        except DataError as e:
            raise SampleError("storage", item.key, str(e)) from e
        if len(blob) != item.end - item.start:
            raise SampleError(
                "truncated",
                item.key,
                f"{storage.url(item.shard)} ends early (truncated tar): got "
                f"{len(blob)} of {item.end - item.start} bytes",
            )

        def member(ext: str) -> bytes:
            off, size = item.members[ext]
            return blob[off - item.start : off - item.start + size]

        try:
            record = SampleRecord.from_json_dict(json.loads(member("json")))
        except (ValueError, TypeError) as e:
            raise SampleError("bad_json", item.key, str(e)) from e
        ext = record.video_ext if record.video_ext in item.members else videos[0]
        source = SourceInfo(storage.url(item.shard), f"{item.key}.{ext}", item.members[ext][0])
        return decode_sample(record, member(ext), spec, source, backend, threads)
    except FATAL:
        raise
    except SampleError as e:
        return Failure(e.kind, item.key, str(e))
    except Exception as e:  # noqa: BLE001 - anything else about one sample: skip and count
        return Failure("error", item.key, f"{type(e).__name__}: {e}")
