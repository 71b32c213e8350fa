"""Data config: shards, decoding, streaming (owned by the data pipeline, issue 5)."""

from __future__ import annotations

from dataclasses import dataclass

from stts_train.config.base import check


@dataclass(kw_only=True)
class DataConfig:
    path: str = ""
    """Shard directory or s3://bucket/prefix written by `stts-train data build` ('' = none)."""
    max_frames: int = 16
    """Frames sampled per video (uniform, including the last frame)."""
    max_fps: float = 2.0
    """Frame-rate cap for sampling."""
    seed: int = 0
    shuffle_buffer: int = 64
    num_decode_actors: int = 1
    ray_address: str | None = None
    """None = in-process local Ray; otherwise a cluster address."""
    max_consecutive_failures: int = 16

    def __post_init__(self) -> None:
        check(self.max_frames >= 1, f"data.max_frames={self.max_frames} must be >= 1")
        check(self.max_fps > 0, f"data.max_fps={self.max_fps} must be > 0")
