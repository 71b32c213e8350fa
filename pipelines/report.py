"""`data verify` (decode every sample, check tars against the manifest) and `data stats`."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from typing import Any

import numpy as np

from pipelines.decode import decode_sample
from pipelines.errors import FATAL, SampleError
from pipelines.schema import DecodeSpec, SampleRecord, SourceInfo
from pipelines.shard_writer import split_member
from pipelines.storage import StorageOptions
from pipelines.stream import Dataset


def verify_spec(image_size: int, frames: int) -> DecodeSpec:
    """Decode settings for `data verify`: `frames` frames at `image_size` pixels, no fps cap.

    Verifying needs no model, so the patch size is 14 or 16 where it divides `image_size`
    (else the whole image).
    """
    patch = 14 if image_size % 14 == 0 else 16 if image_size % 16 == 0 else image_size
    return DecodeSpec(
        image_size=image_size,
        patch_size=patch,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        max_frames=frames,
        max_fps=1000.0,
    )


def verify(
    root: str,
    spec: DecodeSpec,
    opts: StorageOptions | None = None,
    backend: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Read every shard sequentially and decode every sample. Returns a report dict."""
    from tqdm import tqdm

    ds = Dataset(root, opts)
    report: dict[str, Any] = {"num_samples": 0, "num_ok": 0, "failures": [], "shards": []}
    bar = tqdm(total=ds.num_samples, desc="verify", unit="sample", disable=not progress)
    for shard in ds.shards:
        url = ds.storage.url(shard["name"])
        found = 0
        try:
            data = ds.storage.read(shard["name"])
            members: dict[str, dict[str, bytes]] = {}
            order: list[str] = []
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    key, ext = split_member(info.name)
                    if key not in members:
                        members[key] = {}
                        order.append(key)
                    f = tar.extractfile(info)
                    members[key][ext] = f.read() if f is not None else b""
        except FATAL:
            raise
        except Exception as e:  # noqa: BLE001 - a broken tar is a finding, not a crash
            report["failures"].append(
                {
                    "key": None,
                    "shard": url,
                    "kind": "bad_tar",
                    "message": f"{type(e).__name__}: {e}",
                }
            )
            report["shards"].append(
                {"name": shard["name"], "expected": shard["num_samples"], "found": 0}
            )
            bar.update(shard["num_samples"])
            continue
        for key in order:
            found += 1
            report["num_samples"] += 1
            parts = members[key]
            try:
                if "json" not in parts:
                    raise SampleError("missing_json", key, "no JSON record")
                record = SampleRecord.from_json_dict(json.loads(parts["json"]))
                video = parts.get(record.video_ext)
                if video is None:
                    raise SampleError("missing_video", key, f"no {key}.{record.video_ext}")
                decode_sample(
                    record, video, spec, SourceInfo(url, f"{key}.{record.video_ext}"), backend
                )
                report["num_ok"] += 1
            except FATAL:
                raise
            except Exception as e:  # noqa: BLE001
                kind = e.kind if isinstance(e, SampleError) else type(e).__name__
                report["failures"].append(
                    {"key": key, "shard": url, "kind": kind, "message": str(e)[:300]}
                )
            bar.update(1)
        report["shards"].append(
            {"name": shard["name"], "expected": shard["num_samples"], "found": found}
        )
        if found != shard["num_samples"]:
            report["failures"].append(
                {
                    "key": None,
                    "shard": url,
                    "kind": "count_mismatch",
                    "message": f"manifest says {shard['num_samples']} samples, tar has {found}",
                }
            )
    bar.close()
    report["ok"] = not report["failures"]
    return report


def _dist(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values, dtype=np.float64)
    return {
        "min": float(a.min()),
        "p10": float(np.percentile(a, 10)),
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "max": float(a.max()),
        "mean": float(a.mean()),
    }


def stats(
    root: str, opts: StorageOptions | None = None, max_frames: int = 16, max_fps: float = 2.0
) -> dict[str, Any]:
    """Counts and length distributions from the JSON records (ranged reads, no decoding)."""
    from pipelines.decode import sample_frame_indices

    ds = Dataset(root, opts)
    durations, frames, sampled, q_len, a_len, sizes = [], [], [], [], [], []
    codecs: Counter = Counter()
    resolutions: Counter = Counter()
    for i, shard in enumerate(ds.shards):
        for entry in ds.index(i):
            if "json" not in entry["members"]:
                continue
            off, size = entry["members"]["json"]
            rec = json.loads(ds.storage.read(shard["name"], off, off + size))
            durations.append(rec["duration_s"])
            frames.append(rec["num_frames"])
            sampled.append(
                len(sample_frame_indices(rec["num_frames"], rec["fps"], max_frames, max_fps))
            )
            q_len.append(len(rec["question"]))
            a_len.append(len(rec["answer"]))
            sizes.append(rec["num_bytes"])
            codecs[rec["codec"]] += 1
            resolutions[f"{rec['width']}x{rec['height']}"] += 1
    return {
        "path": root,
        "fingerprint": ds.fingerprint,
        "num_samples": ds.num_samples,
        "num_shards": len(ds.shards),
        "codecs": dict(codecs),
        "resolutions": dict(resolutions.most_common(10)),
        "duration_s": _dist(durations),
        "source_frames": _dist(frames),
        f"sampled_frames(max_frames={max_frames},max_fps={max_fps})": _dist(sampled),
        "question_chars": _dist(q_len),
        "answer_chars": _dist(a_len),
        "video_bytes": _dist(sizes),
    }
