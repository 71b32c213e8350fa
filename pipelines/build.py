"""`stts-train data build SRC DEST`: videos + JSONL annotations -> WebDataset shards + manifest.

Annotation rows (one JSON object per line)::

    {"video": "clips/a.mp4", "question": "...", "answer": "...",
     "choices": ["..."], "timestamps": [1.5, 3.0], "evidence": {...}, "id": "optional-key"}

`video` (or `video_path`) is relative to SRC. The key is `id` when given, else
`<video stem>-<line number>`, made WebDataset-safe. Videos are probed in parallel Ray tasks.

Idempotent: the sample order (sorted by key), shard boundaries and tar bytes are a pure function
of the inputs and limits, and the manifest (written last) carries a fingerprint over every
record and video hash. A re-run whose fingerprint and limits match an existing complete
manifest writes nothing; otherwise shards are rewritten under the same names and stale
shard files are removed, so samples are never duplicated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

from pipelines.errors import DataError
from pipelines.schema import MANIFEST_NAME, SCHEMA_VERSION, SampleRecord, sanitize_key
from pipelines.shard_writer import ShardWriter
from pipelines.storage import Storage, StorageOptions

log = logging.getLogger(__name__)


def find_annotations(src: str, annotations: str | None) -> str:
    if annotations:
        path = annotations if os.path.isabs(annotations) else os.path.join(src, annotations)
        if not os.path.isfile(path):
            raise DataError(f"annotation file {path} does not exist; pass --annotations FILE")
        return path
    if not os.path.isdir(src):
        raise DataError(
            f"source folder {src} does not exist; SRC must be a folder of videos "
            "plus a JSONL annotation file"
        )
    default = os.path.join(src, "annotations.jsonl")
    if os.path.isfile(default):
        return default
    found = sorted(f for f in os.listdir(src) if f.endswith(".jsonl"))
    if len(found) == 1:
        return os.path.join(src, found[0])
    raise DataError(
        f"no annotation file in {src}: expected {default}"
        + (f" or exactly one *.jsonl (found {found})" if found else "")
        + "; pass --annotations FILE"
    )


def read_annotations(path: str, src: str) -> list[dict[str, Any]]:
    """Parse and validate the JSONL rows; errors name the file and line."""
    rows = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON: {e}") from e
            if not isinstance(row, dict):
                raise DataError(f"{where}: each line must be a JSON object")
            video = row.get("video", row.get("video_path"))
            if not isinstance(video, str) or not video:
                raise DataError(f"{where}: missing 'video' (path relative to {src})")
            for name in ("question", "answer"):
                if not isinstance(row.get(name), str):
                    raise DataError(f"{where}: missing or non-string {name!r}")
            choices = row.get("choices")
            if choices is not None and not (
                isinstance(choices, list) and all(isinstance(c, str) for c in choices)
            ):
                raise DataError(f"{where}: 'choices' must be a list of strings")
            timestamps = row.get("timestamps")
            if timestamps is not None and not (
                isinstance(timestamps, list)
                and all(isinstance(t, (int, float)) for t in timestamps)
            ):
                raise DataError(f"{where}: 'timestamps' must be a list of numbers")
            video_path = os.path.normpath(os.path.join(src, video))
            if not os.path.isfile(video_path):
                raise DataError(f"{where}: video file {video_path} does not exist")
            raw_key = (
                str(row["id"])
                if "id" in row
                else (f"{os.path.splitext(os.path.basename(video))[0]}-{lineno:06d}")
            )
            key = sanitize_key(raw_key)
            if key in seen:
                raise DataError(
                    f"{where}: sample key {key!r} repeats line {seen[key]}; give "
                    "each row a unique 'id'"
                )
            seen[key] = lineno
            rows.append(
                {"key": key, "video": video, "video_path": video_path, "where": where, "row": row}
            )
    if not rows:
        raise DataError(f"{path}: no annotation rows")
    return rows


def fingerprint(records: list[SampleRecord]) -> str:
    """sha256 over the schema version and every record (which holds the video's sha256)."""
    h = hashlib.sha256(f"stts-shards-v{SCHEMA_VERSION}\n".encode())
    for rec in records:
        h.update(json.dumps(rec.to_json_dict(), sort_keys=True).encode())
        h.update(b"\n")
    return h.hexdigest()


def read_manifest(storage: Storage) -> dict[str, Any] | None:
    if not storage.exists(MANIFEST_NAME):
        return None
    try:
        return json.loads(storage.read(MANIFEST_NAME))
    except json.JSONDecodeError as e:
        raise DataError(f"{storage.url(MANIFEST_NAME)} is not valid JSON: {e}") from e


def _up_to_date(storage: Storage, old: dict[str, Any] | None, fp: str, limits: dict) -> bool:
    if not old or old.get("fingerprint") != fp or old.get("limits") != limits:
        return False
    for shard in old.get("shards", []):
        if storage.size(shard["name"]) != shard["num_bytes"] or not storage.exists(shard["index"]):
            return False
    return True


def build(
    src: str,
    dest: str,
    *,
    annotations: str | None = None,
    max_samples_per_shard: int = 1000,
    max_shard_bytes: int = 1 << 30,
    num_probe_workers: int = 2,
    skip_bad: bool = False,
    ray_address: str | None = None,
    storage_options: StorageOptions | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Build shards in `dest` (path or s3://bucket/prefix). Returns the manifest dict.

    Raises:
        DataError: missing/invalid annotations, missing or unreadable videos (unless
            `skip_bad`), storage failures after retries.
    """
    from tqdm import tqdm

    from pipelines.ray_workers import probe_in_ray, ray_session

    src = os.path.abspath(src)
    ann_path = find_annotations(src, annotations)
    rows = read_annotations(ann_path, src)
    # probe each distinct video once
    unique = sorted({r["video_path"] for r in rows})
    with ray_session(ray_address, num_cpus=max(1, num_probe_workers)):
        with tqdm(total=len(unique), desc="probe", unit="video", disable=not progress) as bar:
            probed = dict(zip(unique, probe_in_ray(unique, max(1, num_probe_workers), bar)))
    records: list[SampleRecord] = []
    skipped: list[str] = []
    for r in rows:
        info = probed[r["video_path"]]
        if "error" in info:
            if skip_bad:
                log.warning("skipping %s (%s)", r["where"], info["error"])
                skipped.append(r["key"])
                continue
            raise DataError(f"{r['where']}: {info['error']} (use --skip-bad to leave it out)")
        row = r["row"]
        records.append(
            SampleRecord(
                key=r["key"],
                video_ext=info["video_ext"],
                source_video=r["video"],
                video_sha256=info["video_sha256"],
                num_bytes=info["num_bytes"],
                duration_s=info["duration_s"],
                fps=info["fps"],
                num_frames=info["num_frames"],
                width=info["width"],
                height=info["height"],
                codec=info["codec"],
                question=row["question"],
                answer=row["answer"],
                choices=row.get("choices"),
                timestamps=row.get("timestamps"),
                evidence=row.get("evidence"),
            )
        )
    if not records:
        raise DataError(f"{ann_path}: every video was unreadable; nothing to write")
    records.sort(key=lambda rec: rec.key)
    fp = fingerprint(records)
    limits = {"max_samples_per_shard": max_samples_per_shard, "max_shard_bytes": max_shard_bytes}
    storage = Storage(dest, storage_options)
    old = read_manifest(storage)
    if _up_to_date(storage, old, fp, limits):
        log.info("%s is up to date (fingerprint %s); nothing written", dest, fp[:12])
        assert old is not None
        return old
    if old is not None:
        storage.remove(MANIFEST_NAME)  # the old manifest must not describe half-rewritten shards
    writer = ShardWriter(storage, max_samples=max_samples_per_shard, max_bytes=max_shard_bytes)
    by_path = {r["key"]: r["video_path"] for r in rows}
    for rec in tqdm(records, desc="write", unit="sample", disable=not progress):
        with open(by_path[rec.key], "rb") as f:
            video = f.read()
        if hashlib.sha256(video).hexdigest() != rec.video_sha256:
            raise DataError(f"{by_path[rec.key]} changed while building; run the build again")
        writer.write(
            rec.key,
            {"json": json.dumps(rec.to_json_dict(), sort_keys=True).encode(), rec.video_ext: video},
        )
    shards = writer.close()
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "fingerprint": fp,
        "num_samples": len(records),
        "num_shards": len(shards),
        "shards": shards,
        "limits": limits,
        "skipped_at_build": skipped,
        "source": {"annotations": os.path.basename(ann_path)},
    }
    storage.write(MANIFEST_NAME, json.dumps(manifest, indent=1).encode())
    keep = {MANIFEST_NAME} | {s["name"] for s in shards} | {s["index"] for s in shards}
    for name in storage.list():
        if name.startswith("shard-") and name not in keep:
            storage.remove(name)
    log.info("wrote %d samples in %d shards to %s", len(records), len(shards), dest)
    return manifest
