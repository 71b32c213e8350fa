"""Builders for model tests: micro-batches of videos/images/text with the right placeholder runs."""

from __future__ import annotations

import torch

from stts_train.config.model import ModelConfig
from stts_train.data.batch import MicroBatch

VIDEO, IMAGE = 2, 1


def sample_tokens(cfg: ModelConfig, items: list[tuple[int, int]], gen: torch.Generator, answer_len: int = 3):
    """(ids, labels) for one sample: a prompt, each item's frames as [marker][G patches][end], an answer."""
    tok, g = cfg.tokens, cfg.groups_per_frame
    ids = torch.randint(2, 500, (3,), generator=gen).tolist()
    for modality, frames in items:
        for _ in range(frames):
            start = tok.frame_start_id if modality == VIDEO else tok.image_start_id
            end = tok.frame_end_id if modality == VIDEO else tok.image_end_id
            ids += [int(torch.randint(2, 500, (1,), generator=gen))] + [start] + [tok.image_patch_id] * g + [end]
    answer = torch.randint(2, 500, (answer_len,), generator=gen).tolist()
    ids += [7] + answer
    labels = [-100] * (len(ids) - answer_len - 1) + answer + [-100]
    return ids, labels


def make_batch(cfg: ModelConfig, samples: list[list[tuple[int, int]]], seed: int = 0, pixels=None) -> MicroBatch:
    """Micro-batch from per-sample lists of (modality, frames); pixels random unless given."""
    gen = torch.Generator().manual_seed(seed)
    all_ids, all_labels, lengths = [], [], []
    frames, modality, owner = [], [], []
    for s, items in enumerate(samples):
        ids, labels = sample_tokens(cfg, items, gen)
        all_ids += ids
        all_labels += labels
        lengths.append(len(ids))
        for m, n in items:
            modality.append(m)
            frames.append(n)
            owner.append(s)
    total = sum(frames)
    if pixels is None:
        pixels = torch.randn(total, cfg.vit.num_patches, cfg.vit.patch_dim, generator=gen)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    return MicroBatch(
        input_ids_S=torch.tensor(all_ids),
        labels_S=torch.tensor(all_labels),
        cu_seqlens_B1=cu,
        pixels_FNC=pixels,
        item_frames_I=torch.tensor(frames, dtype=torch.long),
        item_modality_I=torch.tensor(modality, dtype=torch.long),
        item_sample_I=torch.tensor(owner, dtype=torch.long),
        sample_keys=[f"s{i}" for i in range(len(samples))],
    )
