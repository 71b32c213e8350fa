"""The micro-batch the model consumes: one packed row of whole samples, no padding.

Shape legend: S packed LLM tokens, F frames (all visual items of the row), N patches per frame,
C patch values (3 * patch**2), I visual items, B samples in the row, G groups per frame.

LLM layout (before pruning; docs/stts.md#llm-compaction): every sample's tokens are
contiguous; a visual item with T frames emits, per frame, its marker tokens and then exactly G
image-patch placeholders (group raster order). The model drops the placeholders (and their
labels) of pruned groups after the ViT and renumbers positions 0..len-1 per sample, so the
planner can count post-pruning lengths from metadata alone (`stts_train.data.lengths`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class MicroBatch:
    input_ids_S: torch.Tensor
    """(S,) int64 token ids, all samples of the row back to back, full unpruned layout."""
    labels_S: torch.Tensor
    """(S,) int64 next-token targets aligned with input_ids (label[i] is the token after i);
    -100 where no loss."""
    cu_seqlens_B1: torch.Tensor
    """(B+1,) int32 sample boundaries in input_ids_S."""
    pixels_FNC: torch.Tensor
    """(F, N, C) float patchified, normalised frames of every visual item, item after item."""
    item_frames_I: torch.Tensor
    """(I,) int64 frames (or crops) per visual item."""
    item_modality_I: torch.Tensor
    """(I,) int64 1 image, 2 video (pruning applies to videos only)."""
    item_sample_I: torch.Tensor
    """(I,) int64 index of the sample (0..B-1) each item belongs to."""
    sample_keys: list[str] = field(default_factory=list)
    padding_samples: int = 0
    """Leading samples that are padding (no loss, no key): a rank with nothing planned for a row
    still runs the step's collectives."""

    @property
    def num_samples(self) -> int:
        return int(self.cu_seqlens_B1.numel() - 1) - self.padding_samples

    def to(self, device: torch.device | str, float_dtype: torch.dtype | None = None) -> MicroBatch:
        pixels = self.pixels_FNC.to(device)
        if float_dtype is not None:
            pixels = pixels.to(float_dtype)
        return MicroBatch(
            input_ids_S=self.input_ids_S.to(device),
            labels_S=self.labels_S.to(device),
            cu_seqlens_B1=self.cu_seqlens_B1.to(device),
            pixels_FNC=pixels,
            item_frames_I=self.item_frames_I.to(device),
            item_modality_I=self.item_modality_I.to(device),
            item_sample_I=self.item_sample_I.to(device),
            sample_keys=list(self.sample_keys),
            padding_samples=self.padding_samples,
        )
