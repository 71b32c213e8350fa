"""Video bytes -> sampled, resized, normalised, patchified frames (torchcodec, PyAV fallback).

Frame sampling follows Molmo2 (`uniform_last_frame` with an fps cap): a video whose frames at
`max_fps` fit in `max_frames` is sampled every `fps / max_fps` source frames from frame 0;
a longer one gets `max_frames` frames spread uniformly over [0, last frame], last frame included.
With `DecodeSpec.jitter` the fps-capped grid is shifted by a random offset drawn from
(seed, sample key), so a resumed run replays identical clips.

Images go through torch only (no torchvision): antialiased bilinear resize to
image_size x image_size, scale to [0, 1], normalise with mean/std, then cut into
patch x patch tiles in raster order, each flattened as (patch_h, patch_w, rgb).

Shape legend: F frames, H/W pixels, S image_size, N patches per frame, C = 3 * patch * patch.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.errors import FATAL, SampleError
from pipelines.schema import (
    MODALITY_IMAGE,
    MODALITY_VIDEO,
    DecodedSample,
    DecodeSpec,
    SampleRecord,
    SourceInfo,
)

_RESIZE_CHUNK = 8  # frames resized at once: bounds float memory for large sources


def seed_for(seed: int, key: str) -> int:
    """A 63-bit seed from (global seed, sample key), stable across processes and runs."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sample_frame_indices(
    num_frames: int,
    fps: float,
    max_frames: int,
    max_fps: float,
    offset_frac: float = 0.0,
) -> list[int]:
    """Source frame indices to decode (sorted, unique, within [0, num_frames)).

    Args:
        num_frames: frames in the source video (>= 1).
        fps: source frame rate.
        max_frames: most frames to return.
        max_fps: sampling-rate cap.
        offset_frac: in [0, 1); shifts the fps-capped grid by this fraction of its step.
    """
    if num_frames < 1:
        return []
    step = max(1.0, fps / max_fps) if fps > 0 else 1.0
    count_at_cap = int(math.floor((num_frames - 1) / step + 1e-9)) + 1
    if count_at_cap <= max_frames:
        start = offset_frac * step if step > 1 else 0.0
        idx = [int(math.floor(start + i * step + 0.5)) for i in range(count_at_cap)]
        idx = sorted({min(i, num_frames - 1) for i in idx})
        return idx
    if max_frames == 1:
        return [0]
    grid = np.linspace(0.0, num_frames - 1, max_frames)
    return [int(i) for i in np.floor(grid + 0.5)]


def num_sampled_frames(record: SampleRecord | dict[str, Any], spec: DecodeSpec) -> int:
    """Frames a sample will have after decoding, from metadata alone (for the planner)."""
    rec = record if isinstance(record, dict) else record.to_json_dict()
    return len(
        sample_frame_indices(
            int(rec["num_frames"]), float(rec["fps"]), spec.max_frames, spec.max_fps
        )
    )


def frames_for(record: SampleRecord, spec: DecodeSpec) -> list[int]:
    offset = 0.0
    if spec.jitter:
        offset = float(np.random.default_rng(seed_for(spec.seed, record.key)).random())
    return sample_frame_indices(
        record.num_frames, record.fps, spec.max_frames, spec.max_fps, offset
    )


def _decode_torchcodec(
    data: bytes, indices: list[int], threads: int
) -> tuple[torch.Tensor, list[float]]:
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(
        data, dimension_order="NHWC", num_ffmpeg_threads=threads, seek_mode="exact"
    )
    available = decoder.metadata.num_frames
    if available is not None and indices and indices[-1] >= available:
        raise ValueError(f"needs frame {indices[-1]} but the stream has {available}")
    batch = decoder.get_frames_at(indices)
    return batch.data, [float(t) for t in batch.pts_seconds.tolist()]


def _decode_pyav(data: bytes, indices: list[int], threads: int) -> tuple[torch.Tensor, list[float]]:
    import io

    import av

    wanted = set(indices)
    frames: list[np.ndarray] = []
    times: list[float] = []
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise ValueError("no decoder for the video codec")
        stream.codec_context.thread_count = threads
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(float(frame.time) if frame.time is not None else float("nan"))
            if i >= indices[-1]:
                break
    if len(frames) != len(indices):
        raise ValueError(f"decoded {len(frames)} of {len(indices)} requested frames")
    return torch.from_numpy(np.stack(frames)), times


def decode_frames(
    data: bytes, indices: list[int], key: str, backend: str = "auto", threads: int = 1
) -> tuple[torch.Tensor, list[float], str]:
    """Decode the given frame indices to uint8 (F, H, W, 3). Returns (frames, times, backend).

    `auto` tries torchcodec first and falls back to PyAV; raises SampleError when both fail.
    """
    if not indices:
        raise SampleError("zero_frames", key, "no frames to decode")
    order = ["torchcodec", "pyav"] if backend == "auto" else [backend]
    errors = []
    for name in order:
        fn = _decode_torchcodec if name == "torchcodec" else _decode_pyav
        try:
            frames, times = fn(data, indices, threads)
            return frames, times, name
        except FATAL as e:
            if isinstance(e, ImportError) and backend == "auto":
                errors.append(f"{name}: not importable ({e})")
                continue
            raise
        except Exception as e:  # noqa: BLE001 - any decoder failure: try the next, then skip
            errors.append(f"{name}: {type(e).__name__}: {str(e)[:200]}")
    kind = "unknown_codec" if any("codec" in e.lower() for e in errors) else "corrupt"
    raise SampleError(kind, key, "; ".join(errors))


def to_patches(frames_FHW3: torch.Tensor, spec: DecodeSpec) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float32 (F, N, C) normalised patches in raster order."""
    size, p = spec.image_size, spec.patch_size
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
    chunks = []
    for start in range(0, frames_FHW3.shape[0], _RESIZE_CHUNK):
        x_F3HW = frames_FHW3[start : start + _RESIZE_CHUNK].permute(0, 3, 1, 2).float()
        if x_F3HW.shape[-2:] != (size, size):
            x_F3HW = F.interpolate(
                x_F3HW, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        x_F3SS = ((x_F3HW.clamp_(0, 255) / 255.0) - mean) / std
        chunks.append(x_F3SS)
    x_F3SS = torch.cat(chunks)
    g = size // p
    num_f = x_F3SS.shape[0]
    # (F, 3, g, p, g, p) -> (F, g, g, p, p, 3): raster patch order, RGB innermost per pixel
    x = x_F3SS.view(num_f, 3, g, p, g, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(num_f, g * g, p * p * 3).contiguous()


def decode_sample(
    record: SampleRecord,
    data: bytes,
    spec: DecodeSpec,
    source: SourceInfo,
    backend: str = "auto",
    threads: int = 1,
) -> DecodedSample:
    """Decode one shard sample into a `DecodedSample` (raises SampleError on bad data)."""
    if record.num_frames < 1:
        raise SampleError("zero_frames", record.key, "record says zero frames")
    indices = frames_for(record, spec)
    frames, times, used = decode_frames(data, indices, record.key, backend, threads)
    if frames.shape[0] == 0:
        raise SampleError("zero_frames", record.key, "decoder returned no frames")
    times = [t if math.isfinite(t) else i / record.fps for t, i in zip(times, indices)]
    pixels_FNC = to_patches(frames, spec)
    num = int(pixels_FNC.shape[0])
    return DecodedSample(
        key=record.key,
        source=source,
        pixels_FNC=pixels_FNC,
        frame_times_s=[round(t, 6) for t in times],
        modality=MODALITY_IMAGE if num == 1 else MODALITY_VIDEO,
        num_frames=num,
        question=record.question,
        answer=record.answer,
        choices=list(record.choices) if record.choices is not None else None,
        evidence=record.evidence,
        grid_hw=(spec.grid, spec.grid),
        metadata=record.to_json_dict(),
        backend=used,
    )
