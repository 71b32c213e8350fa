"""Data config: shards, decoding, streaming (owned by the data pipeline, `pipelines/`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from stts_train.config.base import check


@dataclass(kw_only=True)
class DataConfig:
    path: str = ""
    """Shard directory or s3://bucket/prefix written by `stts-train data build` ('' = none)."""
    eval_path: str = ""
    """Held-out dataset for `stts-train eval` ('' = use `path`)."""
    max_frames: int = 16
    """Frames sampled per video (uniform, including the last frame)."""
    max_fps: float = 2.0
    """Frame-rate cap for sampling."""
    seed: int = 0
    """Seeds the per-epoch shard order, the shuffle and per-sample decode randomness."""
    shuffle_buffer: int = 64
    """Shuffle-buffer size in samples (applied to sample indices; 0 or 1 = no shuffle)."""
    num_decode_actors: int = 1
    """Ray decode actors per training rank."""
    ray_address: str | None = None
    """None = in-process local Ray; otherwise a cluster address."""
    max_consecutive_failures: int = 16
    """Bad samples in a row after which streaming stops with a DataError."""
    num_epochs: int | None = None
    """Epochs to stream; None = endless (training); the epoch number is in the stream state."""
    loader: Literal["ray", "sync"] = "ray"
    """`ray`: decode in Ray actors; `sync`: decode in the calling process (tests, debugging).
    Both yield the same samples in the same order with the same state."""
    decoder: Literal["auto", "torchcodec", "pyav"] = "auto"
    """`auto`: torchcodec with PyAV as the fallback."""
    queue_size: int = 8
    """Decoded samples in flight per rank (queued + being decoded); bounds memory."""
    actor_num_cpus: float = 1.0
    """CPUs Ray reserves per decode actor."""
    decode_threads: int = 1
    """FFmpeg/torch threads per decode actor."""
    s3_endpoint_url: str | None = None
    """S3-compatible endpoint (None = AWS_ENDPOINT_URL[_S3] or AWS). Credentials never go here."""
    storage_connect_timeout_s: float = 5.0
    storage_read_timeout_s: float = 30.0
    storage_max_attempts: int = 5

    def __post_init__(self) -> None:
        check(self.max_frames >= 1, f"data.max_frames={self.max_frames} must be >= 1")
        check(self.max_fps > 0, f"data.max_fps={self.max_fps} must be > 0")
        check(self.shuffle_buffer >= 0, f"data.shuffle_buffer={self.shuffle_buffer} must be >= 0")
        check(
            self.num_decode_actors >= 1,
            f"data.num_decode_actors={self.num_decode_actors} must be >= 1; use "
            "data.loader=sync to decode in-process",
        )
        check(
            self.max_consecutive_failures >= 1,
            f"data.max_consecutive_failures={self.max_consecutive_failures} must be >= 1",
        )
        check(
            self.num_epochs is None or self.num_epochs >= 1,
            f"data.num_epochs={self.num_epochs} must be >= 1 or null (endless)",
        )
        check(self.queue_size >= 1, f"data.queue_size={self.queue_size} must be >= 1")
        check(
            self.storage_max_attempts >= 1,
            f"data.storage_max_attempts={self.storage_max_attempts} must be >= 1",
        )
        check(
            self.storage_read_timeout_s > 0 and self.storage_connect_timeout_s > 0,
            "data.storage_*_timeout_s must be > 0 (timeouts are always bounded)",
        )
