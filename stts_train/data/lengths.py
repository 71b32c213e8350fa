"""Length model: exact token counts of a sample from its metadata alone.

Geometry (docs/stts.md#geometry, #budget): a frame is a g x g patch grid (g = image_size/patch_size,
N = g*g patches), cut into G = (g/pool)^2 groups of pool^2 patches; one group is one LLM image
token. An image is one crop (one frame per crop) and is never pruned. A video of T frames keeps
`kept_groups(G, T, keep_ratio)` groups (exact rational budget, frame 0 always kept).

- ViT blocks 0..prune_at+1 see every patch of every frame: `vit_tokens_pre` = sum(frames) * N.
- Later ViT blocks see only kept patches (no refill; one varlen sequence per frame):
  `vit_tokens_post` = images' N per crop + videos' kept_groups * pool^2.
- The LLM sees every non-placeholder token (text, timestamps, frame markers: `num_text_tokens`)
  plus one token per kept group: `llm_tokens`.
Text-only samples have no ViT work.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from stts_train.config.model import ModelConfig
from stts_train.constants import Modality
from stts_train.errors import DataError
from stts_train.pruning.budget import kept_groups


@dataclass(frozen=True)
class Geometry:
    """The numbers the length model needs, taken from a `ModelConfig`."""

    patches_per_frame: int
    groups_per_frame: int
    patches_per_group: int
    keep_ratio: float
    """Effective keep ratio of videos (1.0 when the pruner is off)."""

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, keep_ratio: float | None = None) -> Geometry:
        if keep_ratio is None:
            keep_ratio = cfg.stts.keep_ratio if cfg.stts.pruner == "stts" else 1.0
        return cls(
            patches_per_frame=cfg.vit.num_patches,
            groups_per_frame=cfg.groups_per_frame,
            patches_per_group=cfg.patches_per_group,
            keep_ratio=float(keep_ratio),
        )


@dataclass(frozen=True)
class SampleMeta:
    """What the planner knows about a sample before decoding its pixels."""

    key: str
    modalities: tuple[int, ...] = ()
    """Per visual item: 1 image (or crop set), 2 video (3 multi-image counts as images)."""
    frames: tuple[int, ...] = ()
    """Per visual item: frames (videos) or crops (images)."""
    num_text_tokens: int = 0
    """Every LLM token that is not an image-patch placeholder (text, timestamps, markers)."""
    num_loss_tokens: int = 0
    """Tokens with a label (never a placeholder)."""
    extra: dict = field(default_factory=dict, compare=False, hash=False)
    """Free-form provenance (source shard, ...); ignored by the length and cost models."""

    def __post_init__(self) -> None:
        if len(self.modalities) != len(self.frames):
            raise DataError(
                f"sample {self.key!r}: {len(self.modalities)} modalities but {len(self.frames)} "
                "frame counts; give one of each per visual item"
            )
        for m, t in zip(self.modalities, self.frames):
            if m not in (Modality.IMAGE, Modality.VIDEO, Modality.MULTI_IMAGE):
                raise DataError(f"sample {self.key!r}: visual item modality {m} is not 1, 2 or 3")
            if t < 1:
                raise DataError(f"sample {self.key!r}: a visual item needs >= 1 frame, found {t}")
        if self.num_text_tokens < 0 or self.num_loss_tokens < 0:
            raise DataError(f"sample {self.key!r}: token counts must be >= 0")
        if self.num_loss_tokens > self.num_text_tokens:
            raise DataError(
                f"sample {self.key!r}: {self.num_loss_tokens} loss tokens but only "
                f"{self.num_text_tokens} non-placeholder tokens (placeholders never carry loss)"
            )

    @property
    def num_frames(self) -> int:
        return sum(self.frames)


@functools.lru_cache(maxsize=65536)
def _item_kept_groups(groups: int, frames: int, modality: int, keep_ratio: float) -> int:
    if modality != Modality.VIDEO or keep_ratio >= 1.0:
        return groups * frames
    return kept_groups(groups, frames, keep_ratio)


def item_kept_groups(geom: Geometry, modality: int, frames: int) -> int:
    """LLM image tokens of one visual item after pruning (exact; images are never pruned)."""
    return _item_kept_groups(geom.groups_per_frame, frames, modality, geom.keep_ratio)


def kept_groups_per_item(meta: SampleMeta, geom: Geometry) -> list[int]:
    return [item_kept_groups(geom, m, t) for m, t in zip(meta.modalities, meta.frames)]


def vit_tokens_pre(meta: SampleMeta, geom: Geometry) -> int:
    """Patches entering ViT block 0 (and every block up to prune_at+1)."""
    return meta.num_frames * geom.patches_per_frame


def vit_tokens_post(meta: SampleMeta, geom: Geometry) -> int:
    """Patches in ViT blocks after prune_at+1 (kept groups x pool^2; images unpruned)."""
    total = 0
    for m, t in zip(meta.modalities, meta.frames):
        if m == Modality.VIDEO:
            total += item_kept_groups(geom, m, t) * geom.patches_per_group
        else:
            total += t * geom.patches_per_frame
    return total


def llm_tokens_pre(meta: SampleMeta, geom: Geometry) -> int:
    """Tokens in the collated (unpruned) layout: text + G placeholders per frame."""
    return meta.num_text_tokens + meta.num_frames * geom.groups_per_frame


def llm_tokens(meta: SampleMeta, geom: Geometry) -> int:
    """Tokens the LLM runs on after pruning: text + kept groups."""
    return meta.num_text_tokens + sum(kept_groups_per_item(meta, geom))
