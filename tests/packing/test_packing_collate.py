"""Collation: boundaries, positions, item bookkeeping, loss tokens, validation."""

from __future__ import annotations

import pytest
import torch

from stts_train.data.collate import (
    collate_plan,
    collate_row,
    llm_positions,
    validate_sample,
    vit_frame_cu_seqlens,
)
from stts_train.errors import LayoutError


def test_row_layout(tiny_model_cfg, make_sample):
    cfg = tiny_model_cfg
    a = make_sample(cfg, "a", [(2, 3)], prompt=4, answer=3, seed=0)
    b = make_sample(cfg, "b", [], prompt=5, answer=2, seed=1)
    c = make_sample(cfg, "c", [(1, 1), (2, 2)], prompt=2, answer=2, seed=2)
    mb = collate_row([a, b, c], cfg)
    lens = [a.input_ids.numel(), b.input_ids.numel(), c.input_ids.numel()]
    assert mb.cu_seqlens_B1.dtype == torch.int32
    assert mb.cu_seqlens_B1.tolist() == [0, lens[0], lens[0] + lens[1], sum(lens)]
    assert torch.equal(mb.input_ids_S, torch.cat([a.input_ids, b.input_ids, c.input_ids]))
    assert mb.item_frames_I.tolist() == [3, 1, 2] and mb.item_modality_I.tolist() == [2, 1, 2]
    assert mb.item_sample_I.tolist() == [0, 2, 2]
    assert mb.pixels_FNC.shape == (6, cfg.vit.num_patches, cfg.vit.patch_dim)
    assert mb.sample_keys == ["a", "b", "c"]
    pos = llm_positions(mb.cu_seqlens_B1)
    assert pos.tolist() == list(range(lens[0])) + list(range(lens[1])) + list(range(lens[2]))


def test_vit_frame_boundaries_allow_empty_frames():
    assert vit_frame_cu_seqlens([36, 0, 18, 36]).tolist() == [0, 36, 36, 54, 90]


def test_text_only_row(tiny_model_cfg, make_sample):
    mb = collate_row([make_sample(tiny_model_cfg, "t", [], 3, 3, 0)], tiny_model_cfg)
    assert mb.pixels_FNC.shape[0] == 0 and mb.item_frames_I.numel() == 0


def test_collate_plan_keeps_every_rank_row(tiny_model_cfg, make_sample):
    samples = [make_sample(tiny_model_cfg, str(i), [], 3, 2 + i, i) for i in range(6)]
    ranks = [[[0, 1], [2]], [[3], [4, 5]]]
    batches = collate_plan(ranks, samples, tiny_model_cfg)
    loss_tokens = [[int((mb.labels_S != -100).sum()) for mb in rank] for rank in batches]
    planned = [[sum(samples[i].meta.num_loss_tokens for i in row) for row in r] for r in ranks]
    assert loss_tokens == planned
    assert [[mb.sample_keys for mb in rank] for rank in batches] == [
        [["0", "1"], ["2"]],
        [["3"], ["4", "5"]],
    ]


def test_validation_catches_inconsistent_samples(tiny_model_cfg, make_sample):
    cfg = tiny_model_cfg
    s = make_sample(cfg, "v", [(2, 2)], 3, 3, 0)
    validate_sample(s, cfg)
    bad = make_sample(cfg, "v", [(2, 2)], 3, 3, 0)
    bad.labels[(bad.input_ids == cfg.tokens.image_patch_id).nonzero()[0]] = 5
    with pytest.raises(LayoutError, match="placeholders must carry no loss"):
        validate_sample(bad, cfg)
    bad = make_sample(cfg, "v", [(2, 2)], 3, 3, 0)
    bad.item_frames = [3]
    with pytest.raises(LayoutError, match="misalignment"):
        validate_sample(bad, cfg)
    bad = make_sample(cfg, "v", [(2, 2)], 3, 3, 0)
    object.__setattr__(bad.meta, "num_text_tokens", bad.meta.num_text_tokens + 1)
    with pytest.raises(LayoutError, match="metadata"):
        validate_sample(bad, cfg)
