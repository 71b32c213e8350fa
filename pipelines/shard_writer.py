"""Write WebDataset tar shards with count/size limits, a byte-offset index per shard, and upload.

Shards are written to a local temporary file with `webdataset.TarWriter` (fixed mtime, so the
same input gives the same bytes), indexed, then moved/uploaded to the dataset root. The index
(`shard-NNNNNN.idx.json`) records each member's data offset and size so readers can fetch one
sample with a ranged read instead of streaming the whole shard.
"""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from pipelines.errors import DataError
from pipelines.schema import SCHEMA_VERSION, index_name, shard_name
from pipelines.storage import Storage


def split_member(name: str) -> tuple[str, str]:
    """`key.ext` -> (key, ext); WebDataset splits at the first dot of the base name."""
    if "/" in name or name.startswith(".") or ".." in name:
        raise DataError(f"tar member {name!r}: nested or relative paths are not allowed in shards")
    key, dot, ext = name.partition(".")
    if not dot:
        raise DataError(f"tar member {name!r} has no extension")
    return key, ext


def index_tar(fileobj: BinaryIO) -> list[dict[str, Any]]:
    """Scan a tar and group members by key: [{key, members: {ext: [offset, size]}, start, end}]."""
    samples: list[dict[str, Any]] = []
    with tarfile.open(fileobj=fileobj, mode="r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, ext = split_member(info.name)
            if not samples or samples[-1]["key"] != key:
                samples.append({"key": key, "members": {}, "start": info.offset})
            samples[-1]["members"][ext] = [info.offset_data, info.size]
            samples[-1]["end"] = info.offset_data + info.size
    return samples


@dataclass
class ShardWriter:
    """Roll shards at `max_samples` samples or `max_bytes` bytes (whichever comes first)."""

    storage: Storage
    max_samples: int = 1000
    max_bytes: int = 1 << 30
    shards: list[dict[str, Any]] = field(default_factory=list)
    _tmp: Any = None
    _writer: Any = None
    _count: int = 0
    _bytes: int = 0
    _keys: set = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.max_samples < 1 or self.max_bytes < 1:
            raise DataError(
                f"shard limits must be positive: max_samples={self.max_samples}, "
                f"max_bytes={self.max_bytes}"
            )

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """Add one sample: `members` maps extension -> bytes (e.g. {'json': ..., 'mp4': ...})."""
        if key in self._keys:
            raise DataError(f"duplicate sample key {key!r}; keys must be unique in a dataset")
        size = sum(len(v) for v in members.values()) + 512 * (len(members) + 1)
        if self._writer is not None and (
            self._count >= self.max_samples or self._bytes + size > self.max_bytes
        ):
            self._close_shard()
        if self._writer is None:
            self._open_shard()
        self._keys.add(key)
        self._writer.write({"__key__": key, **members})
        self._count += 1
        self._bytes += size

    def _open_shard(self) -> None:
        import webdataset as wds

        fd, path = tempfile.mkstemp(suffix=".tar", prefix="stts-shard-")
        self._tmp = (os.fdopen(fd, "wb"), path)
        self._writer = wds.TarWriter(self._tmp[0], mtime=0.0, user="stts", group="stts")
        self._count = 0
        self._bytes = 0

    def _close_shard(self) -> None:
        self._writer.close()
        f, path = self._tmp
        if not f.closed:
            f.close()
        name = shard_name(len(self.shards))
        with open(path, "rb") as fh:
            samples = index_tar(fh)
        num_bytes = os.path.getsize(path)
        index = {"schema_version": SCHEMA_VERSION, "shard": name, "samples": samples}
        try:
            self.storage.upload(path, name)
        finally:
            if os.path.exists(path):
                os.remove(path)
        self.storage.write(index_name(name), json.dumps(index).encode())
        self.shards.append(
            {
                "name": name,
                "num_samples": len(samples),
                "num_bytes": num_bytes,
                "index": index_name(name),
            }
        )
        self._writer = None
        self._tmp = None

    def close(self) -> list[dict[str, Any]]:
        """Flush the last shard; returns the manifest's shard entries."""
        if self._writer is not None:
            self._close_shard()
        return self.shards
