"""Shared builders for the packing tests: tiny tokenized samples and length metadata."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stts_train.config import load_config
from stts_train.config.model import ModelConfig
from stts_train.data.collate import IGNORE_INDEX, TokenizedSample
from stts_train.data.lengths import SampleMeta


@pytest.fixture(scope="session")
def tiny_model_cfg() -> ModelConfig:
    return load_config(Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml").model


def build_sample(
    cfg: ModelConfig, key: str, items: list[tuple[int, int]], prompt: int, answer: int, seed: int
) -> TokenizedSample:
    """[prompt] + per frame [frame_start, G placeholders, frame_end] + [answer]; loss on the answer."""
    gen = torch.Generator().manual_seed(seed)
    tok = cfg.tokens

    def text(n: int) -> list[int]:
        return torch.randint(2, min(cfg.llm.vocab_size, 1000), (n,), generator=gen).tolist()

    ids = text(prompt)
    pixels = []
    for _, frames in items:
        for _ in range(frames):
            ids += [tok.frame_start_id] + [tok.image_patch_id] * cfg.groups_per_frame + [tok.frame_end_id]
        pixels.append(torch.randn(frames, cfg.vit.num_patches, cfg.vit.patch_dim, generator=gen))
    answer_start = len(ids)
    ids += text(answer)
    input_ids = torch.tensor(ids, dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    # label[i] is the target of position i: the next token, for positions whose next token is answer
    labels[answer_start - 1 : len(ids) - 1] = input_ids[answer_start:]
    num_placeholders = int((input_ids == tok.image_patch_id).sum())
    meta = SampleMeta(
        key=key,
        modalities=tuple(m for m, _ in items),
        frames=tuple(f for _, f in items),
        num_text_tokens=len(ids) - num_placeholders,
        num_loss_tokens=int((labels != IGNORE_INDEX).sum()),
    )
    return TokenizedSample(
        key=key, input_ids=input_ids, labels=labels, pixels_FNC=pixels,
        item_frames=[f for _, f in items], item_modality=[m for m, _ in items], meta=meta,
    )


@pytest.fixture
def make_sample():
    return build_sample
