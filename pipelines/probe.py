"""Read a video's container metadata (codec, size, fps, frame count, duration) with PyAV.

Probing demuxes packets (no full decode) to count frames and decodes only the first frame to
prove the stream is readable. Errors raise `SampleError` / `DataError` naming the file.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

from pipelines.errors import FATAL, DataError, SampleError


def probe_bytes(data: bytes, name: str) -> dict[str, Any]:
    """Metadata of an encoded video held in memory. Raises SampleError(kind, name, ...)."""
    import av

    if not data:
        raise SampleError("empty", name, "zero bytes")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except FATAL:
        raise
    except Exception as e:
        raise SampleError("corrupt", name, f"cannot open container: {e}") from e
    with container:
        if not container.streams.video:
            raise SampleError("zero_frames", name, "no video stream (zero frames)")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise SampleError("unknown_codec", name, "no decoder for the video codec")
        codec = stream.codec_context.name
        width, height = int(stream.codec_context.width), int(stream.codec_context.height)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        num_frames = 0
        first_ok = False
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                num_frames += 1
                if not first_ok:
                    first_ok = bool(packet.decode()) or first_ok
        except FATAL:
            raise
        except Exception as e:
            raise SampleError("corrupt", name, f"demux/decode failed: {e}") from e
        if num_frames == 0:
            raise SampleError("zero_frames", name, "the video stream has zero frames")
        if fps <= 0:
            raise SampleError("corrupt", name, "no frame rate in the container")
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / 1e6
        else:
            duration = num_frames / fps
        if duration <= 0:
            duration = num_frames / fps
    return {
        "codec": codec,
        "width": width,
        "height": height,
        "fps": fps,
        "num_frames": num_frames,
        "duration_s": round(duration, 6),
    }


def probe_file(path: str) -> dict[str, Any]:
    """Probe a video file and hash its bytes. Raises DataError naming the file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"cannot read video {path}: {e}") from e
    try:
        info = probe_bytes(data, path)
    except SampleError as e:
        raise DataError(f"unreadable video {path}: {e.kind}: {e}") from e
    info["video_sha256"] = hashlib.sha256(data).hexdigest()
    info["num_bytes"] = len(data)
    info["video_ext"] = os.path.splitext(path)[1].lstrip(".").lower()
    return info
