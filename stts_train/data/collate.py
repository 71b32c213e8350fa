"""Collation: a planned row of tokenized samples -> one `MicroBatch` (no padding).

Shape legend: S packed LLM tokens (unpruned layout), F frames, N patches per frame, C patch
values, I visual items, B samples in the row.

A row's samples are laid back to back: `cu_seqlens_B1` marks sample boundaries, so attention
never crosses samples and positions restart at 0 in every sample (the model renumbers them after
dropping pruned placeholders; `llm_positions` gives the pre-pruning numbering). The ViT runs one
varlen sequence per frame (`vit_frame_cu_seqlens`). Labels are next-token targets aligned with the
inputs (label[i] is the token after i, -100 = no loss); placeholders never carry loss, so pruning
them never changes the loss-token count. The division by the step's global loss-token count
happens in the train step (`stts_train/train/loss.py`), not here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stts_train.config.model import ModelConfig
from stts_train.constants import IGNORE_INDEX
from stts_train.data.batch import MicroBatch
from stts_train.data.lengths import SampleMeta
from stts_train.errors import LayoutError


@dataclass
class TokenizedSample:
    key: str
    input_ids: torch.Tensor
    """(L,) int64, with G image-patch placeholders per frame of every visual item, in item order."""
    labels: torch.Tensor
    """(L,) int64 targets aligned with input_ids (label[i] = target for position i), -100 = none."""
    pixels_FNC: list[torch.Tensor]
    """Per visual item, (frames, N, C) patchified frames."""
    item_frames: list[int]
    item_modality: list[int]
    meta: SampleMeta


def validate_sample(sample: TokenizedSample, cfg: ModelConfig) -> None:
    """Raise LayoutError when the sample disagrees with its metadata or the model geometry."""
    ids, labels = sample.input_ids, sample.labels
    where = f"sample {sample.key!r}"
    if ids.ndim != 1 or labels.shape != ids.shape:
        raise LayoutError(
            f"{where}: input_ids {tuple(ids.shape)} and labels {tuple(labels.shape)} "
            "must be equal 1-D"
        )
    if not (len(sample.pixels_FNC) == len(sample.item_frames) == len(sample.item_modality)):
        raise LayoutError(
            f"{where}: give one pixels tensor, frame count and modality per visual item"
        )
    patch = ids == cfg.tokens.image_patch_id
    frames = sum(sample.item_frames)
    if int(patch.sum()) != frames * cfg.groups_per_frame:
        raise LayoutError(
            f"misalignment in {where}: {int(patch.sum())} image placeholders for {frames} frames x "
            f"{cfg.groups_per_frame} groups"
        )
    if bool((labels[patch] != IGNORE_INDEX).any()) or bool(
        (labels == cfg.tokens.image_patch_id).any()
    ):
        raise LayoutError(f"{where}: image placeholders must carry no loss and never be a target")
    n, c = cfg.vit.num_patches, cfg.vit.patch_dim
    for i, (px, t) in enumerate(zip(sample.pixels_FNC, sample.item_frames)):
        if tuple(px.shape) != (t, n, c):
            raise LayoutError(
                f"{where}: item {i} pixels have shape {tuple(px.shape)}, expected ({t}, {n}, {c})"
            )
    meta = sample.meta
    text = ids.numel() - int(patch.sum())
    loss = int((labels != IGNORE_INDEX).sum())
    if (meta.num_text_tokens, meta.num_loss_tokens, list(meta.frames), list(meta.modalities)) != (
        text,
        loss,
        list(sample.item_frames),
        list(sample.item_modality),
    ):
        raise LayoutError(
            f"{where}: metadata (text {meta.num_text_tokens}, loss {meta.num_loss_tokens}, frames "
            f"{list(meta.frames)}, modalities {list(meta.modalities)}) disagrees with the tokens "
            f"(text {text}, loss {loss}, frames {sample.item_frames}, modalities "
            f"{sample.item_modality}); the planner's lengths would be wrong"
        )


def collate_row(
    samples: list[TokenizedSample], cfg: ModelConfig, validate: bool = True
) -> MicroBatch:
    """Pack whole samples back to back into one micro-batch."""
    if validate:
        for s in samples:
            validate_sample(s, cfg)
    n, c = cfg.vit.num_patches, cfg.vit.patch_dim
    lengths = [int(s.input_ids.numel()) for s in samples]
    cu = torch.zeros(len(samples) + 1, dtype=torch.int32)
    if samples:
        cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0).to(torch.int32)
    pixels = [px for s in samples for px in s.pixels_FNC]
    return MicroBatch(
        input_ids_S=torch.cat([s.input_ids.long() for s in samples])
        if samples
        else torch.zeros(0, dtype=torch.long),
        labels_S=torch.cat([s.labels.long() for s in samples])
        if samples
        else torch.zeros(0, dtype=torch.long),
        cu_seqlens_B1=cu,
        pixels_FNC=torch.cat(pixels) if pixels else torch.zeros(0, n, c),
        item_frames_I=torch.tensor([t for s in samples for t in s.item_frames], dtype=torch.long),
        item_modality_I=torch.tensor(
            [m for s in samples for m in s.item_modality], dtype=torch.long
        ),
        item_sample_I=torch.tensor(
            [b for b, s in enumerate(samples) for _ in s.item_frames], dtype=torch.long
        ),
        sample_keys=[s.key for s in samples],
    )


def padding_row(cfg: ModelConfig) -> MicroBatch:
    """A micro-batch of one pad token without loss, for a rank whose planned row is empty (the
    model still runs, so ZeRO-3 gathers and gradient reductions match the other ranks)."""
    n, c = cfg.vit.num_patches, cfg.vit.patch_dim
    return MicroBatch(
        input_ids_S=torch.tensor([cfg.tokens.pad_id], dtype=torch.long),
        labels_S=torch.tensor([IGNORE_INDEX], dtype=torch.long),
        cu_seqlens_B1=torch.tensor([0, 1], dtype=torch.int32),
        pixels_FNC=torch.zeros(0, n, c),
        item_frames_I=torch.zeros(0, dtype=torch.long),
        item_modality_I=torch.zeros(0, dtype=torch.long),
        item_sample_I=torch.zeros(0, dtype=torch.long),
        sample_keys=[],
        padding_samples=1,
    )


def collate_plan(
    ranks: list[list[list[int]]], samples: list[TokenizedSample], cfg: ModelConfig
) -> list[list[MicroBatch]]:
    """Every rank's rows (pool indices into `samples`) as micro-batches."""
    return [[collate_row([samples[i] for i in row], cfg) for row in rank] for rank in ranks]


def llm_positions(cu_seqlens_B1: torch.Tensor) -> torch.Tensor:
    """(S,) positions restarting at 0 in every sample."""
    lengths = (cu_seqlens_B1[1:] - cu_seqlens_B1[:-1]).long()
    total = int(lengths.sum())
    starts = torch.repeat_interleave(cu_seqlens_B1[:-1].long(), lengths)
    return torch.arange(total, dtype=torch.long) - starts


def vit_frame_cu_seqlens(tokens_per_frame: torch.Tensor | list[int]) -> torch.Tensor:
    """(F+1,) int32 boundaries of one varlen sequence per frame (a frame may hold 0 tokens)."""
    t = torch.as_tensor(tokens_per_frame, dtype=torch.int64)
    cu = torch.zeros(t.numel() + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(t, 0).to(torch.int32)
    return cu
