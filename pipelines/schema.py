"""Versioned on-disk shard format and the typed sample handed to training.

This is the only `pipelines` module (besides `pipelines.stream`) that `stts_train` imports. It
imports nothing heavier than torch.

Shard layout (schema version 1)
-------------------------------
A dataset is a directory (local path or ``s3://bucket/prefix``) holding::

    manifest.json              # written last; the commit point of `stts-train data build`
    shard-000000.tar           # WebDataset tar: per sample `<key>.json` then `<key>.<ext>`
    shard-000000.idx.json      # byte offsets of every member, for ranged reads
    ...

Each sample is two tar members sharing a key: the JSON record (fields of `SampleRecord`) and
the encoded video bytes exactly as they were in the source folder (no re-encode); the member
extension is the source file's (`mp4`, `webm`, `mkv`, `mov`, `avi`). Keys contain only
``[A-Za-z0-9_-]`` (WebDataset splits keys from extensions at the first dot).

Shape legend: F sampled frames, N patches per frame, C = 3 * patch * patch values per patch.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import torch

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "mov", "avi", "m4v")
# The values of stts_train.constants.Modality (pipelines imports nothing from stts_train).
MODALITY_IMAGE = 1
MODALITY_VIDEO = 2
_KEY_RE = re.compile(r"[^A-Za-z0-9_-]+")


def sanitize_key(raw: str) -> str:
    """Map any string to a WebDataset-safe key (no dots, no slashes)."""
    key = _KEY_RE.sub("_", raw).strip("_")
    return key or "sample"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def index_name(shard: str) -> str:
    return shard[: -len(".tar")] + ".idx.json"


@dataclass(kw_only=True)
class SampleRecord:
    """The JSON record stored next to each video in a shard (schema version 1)."""

    key: str
    video_ext: str
    """Extension of the video member (`<key>.<video_ext>`)."""
    source_video: str
    """Path of the video relative to the source folder (provenance only)."""
    video_sha256: str
    num_bytes: int
    duration_s: float
    fps: float
    num_frames: int
    width: int
    height: int
    codec: str
    question: str
    answer: str
    choices: list[str] | None = None
    timestamps: list[float] | None = None
    evidence: dict[str, Any] | None = None
    """Passed through from the annotation untouched."""
    schema_version: int = SCHEMA_VERSION

    def to_json_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> SampleRecord:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"shard record schema_version={version!r}, this code reads {SCHEMA_VERSION}; "
                "rebuild the shards with `stts-train data build`"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in ("key", "video_ext", "num_frames", "fps") if n not in data)
        if missing:
            raise ValueError(f"shard record lacks field(s) {missing}")
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True, kw_only=True)
class DecodeSpec:
    """How frames are sampled and turned into ViT patches.

    Built by the model side from `vit.image_size/patch_size/image_mean/image_std` and
    `DataConfig.max_frames/max_fps/seed`.
    """

    image_size: int
    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    max_frames: int
    max_fps: float
    seed: int = 0
    jitter: bool = False
    """Random temporal offset inside the first sampling interval, seeded by (seed, key)."""

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"DecodeSpec.image_size={self.image_size} must be a multiple of "
                f"patch_size={self.patch_size}"
            )
        if self.max_frames < 1 or self.max_fps <= 0:
            raise ValueError(
                f"DecodeSpec needs max_frames >= 1 and max_fps > 0, got {self.max_frames}, "
                f"{self.max_fps}"
            )

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def patches_per_frame(self) -> int:
        return self.grid * self.grid


@dataclass(frozen=True)
class SourceInfo:
    """Where a sample came from: shard URL, tar member name and the member's byte offset."""

    shard_url: str
    member: str
    offset: int = -1


@dataclass
class DecodedSample:
    """One decoded video (or one-frame image) ready for the model and the planner."""

    key: str
    source: SourceInfo
    pixels_FNC: torch.Tensor
    """(F, N, C) float32; patches in raster order, each patch flattened (patch_h, patch_w, rgb),
    normalised with the DecodeSpec mean/std."""
    frame_times_s: list[float]
    modality: int
    """2 video; 1 image (a video with exactly one sampled frame)."""
    num_frames: int
    question: str
    answer: str
    choices: list[str] | None = None
    evidence: dict[str, Any] | None = None
    grid_hw: tuple[int, int] = (0, 0)
    """Patch grid (rows, cols) per frame; N = rows * cols."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """The raw shard record (duration, fps, source frame count, size, codec, timestamps...)."""
    backend: str = ""
    """Decoder that produced the frames (`torchcodec` or `pyav`)."""

    @property
    def num_patches(self) -> int:
        return int(self.pixels_FNC.shape[1])
