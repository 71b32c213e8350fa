"""Length model: exact counts from metadata, equal to what the model runs on."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from stts_train.config.model import ModelConfig, SttsConfig
from stts_train.data.collate import collate_row
from stts_train.data.lengths import (
    Geometry,
    SampleMeta,
    llm_tokens,
    llm_tokens_pre,
    vit_tokens_post,
    vit_tokens_pre,
)
from stts_train.errors import DataError, LayoutError


def geom(keep: float) -> Geometry:
    return Geometry.from_model_config(ModelConfig(stts=SttsConfig(keep_ratio=keep)))


@pytest.mark.parametrize(
    "frames, keep, kept", [(64, 0.5, 2592), (128, 0.5, 5184), (64, 0.7, 3629), (64, 1.0, 5184)]
)
def test_spec_budget_examples(frames, keep, kept):
    g = geom(keep)
    meta = SampleMeta(
        key="v", modalities=(2,), frames=(frames,), num_text_tokens=300, num_loss_tokens=10
    )
    assert llm_tokens(meta, g) == 300 + kept
    assert llm_tokens_pre(meta, g) == 300 + 81 * frames
    assert vit_tokens_pre(meta, g) == 729 * frames
    assert vit_tokens_post(meta, g) == 9 * kept


def test_images_and_text_are_never_pruned():
    g = geom(0.3)
    image = SampleMeta(key="i", modalities=(1,), frames=(1,), num_text_tokens=20)
    crops = SampleMeta(key="c", modalities=(3,), frames=(4,), num_text_tokens=20)
    text = SampleMeta(key="t", num_text_tokens=57, num_loss_tokens=7)
    assert llm_tokens(image, g) == 20 + 81 and vit_tokens_post(image, g) == 729
    assert llm_tokens(crops, g) == 20 + 4 * 81 and vit_tokens_post(crops, g) == 4 * 729
    assert (llm_tokens(text, g), vit_tokens_pre(text, g), vit_tokens_post(text, g)) == (57, 0, 0)


def test_multi_item_sample_sums_items():
    g = geom(0.5)
    meta = SampleMeta(key="m", modalities=(2, 1, 2), frames=(10, 1, 3), num_text_tokens=40)
    kept = (810 - 405) + 81 + (243 - 121)
    assert llm_tokens(meta, g) == 40 + kept
    assert vit_tokens_pre(meta, g) == 14 * 729
    assert vit_tokens_post(meta, g) == 9 * ((810 - 405) + (243 - 121)) + 729


def test_pruner_off_keeps_everything():
    cfg = ModelConfig(stts=SttsConfig(keep_ratio=0.5, pruner="none"))
    meta = SampleMeta(key="v", modalities=(2,), frames=(8,), num_text_tokens=3)
    assert llm_tokens(meta, Geometry.from_model_config(cfg)) == 3 + 8 * 81


def test_bad_metadata_is_rejected():
    with pytest.raises(DataError):
        SampleMeta(key="x", modalities=(2,), frames=())
    with pytest.raises(DataError):
        SampleMeta(key="x", modalities=(2,), frames=(0,))
    with pytest.raises(DataError):
        SampleMeta(key="x", num_text_tokens=3, num_loss_tokens=4)
    with pytest.raises(LayoutError):  # a one-frame video cannot be pruned (docs/stts.md#budget)
        llm_tokens(SampleMeta(key="x", modalities=(2,), frames=(1,)), geom(0.5))


@pytest.mark.parametrize("keep", [1.0, 0.5, 0.3])
def test_lengths_equal_what_the_model_runs(tiny_model_cfg, make_sample, keep):
    from stts_train.models.vlm import Molmo2VLM

    cfg = tiny_model_cfg
    cfg = dataclasses.replace(cfg, stts=dataclasses.replace(cfg.stts, keep_ratio=keep))
    g = Geometry.from_model_config(cfg)
    samples = [
        make_sample(cfg, "video", [(2, 5)], prompt=6, answer=4, seed=1),
        make_sample(cfg, "image", [(1, 1)], prompt=3, answer=5, seed=2),
        make_sample(cfg, "text", [], prompt=9, answer=3, seed=3),
        make_sample(cfg, "two", [(2, 3), (2, 2)], prompt=2, answer=2, seed=4),
    ]
    torch.manual_seed(0)
    model = Molmo2VLM(cfg).eval()
    with torch.no_grad():
        out = model(collate_row(samples, cfg))
    metas = [s.meta for s in samples]
    assert out.stats["llm_tokens"] == sum(llm_tokens(m, g) for m in metas)
    assert out.stats["vit_patches_in"] == sum(vit_tokens_pre(m, g) for m in metas)
    assert out.stats["vit_patches_kept"] == sum(vit_tokens_post(m, g) for m in metas)
    assert int(out.num_loss_tokens) == sum(m.num_loss_tokens for m in metas)
    # one by one too (per-sample lengths, not just the row total)
    for s in samples:
        with torch.no_grad():
            one = model(collate_row([s], cfg))
        assert one.stats["llm_tokens"] == llm_tokens(s.meta, g)
