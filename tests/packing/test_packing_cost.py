"""Cost model: component FLOPs follow the counting rules; calibration recovers known weights."""

from __future__ import annotations

import pytest

from stts_train.config.model import ModelConfig, SttsConfig
from stts_train.data.cost import COMPONENTS, CostModel, CostWeights, fit_weights
from stts_train.data.lengths import SampleMeta


def model(keep: float = 0.5) -> CostModel:
    return CostModel(ModelConfig(stts=SttsConfig(keep_ratio=keep)))


def test_text_only_has_no_vision_cost():
    b = model().breakdown(SampleMeta(key="t", num_text_tokens=100, num_loss_tokens=10))
    assert all(b[k] == 0 for k in ("vit_linear", "vit_attention", "scorer", "connector"))
    assert b["llm_linear"] > 0 and b["llm_attention"] > 0 and b["lm_head"] > 0


def test_llm_terms_scale_linearly_and_quadratically():
    cm = model()
    one = cm.breakdown(SampleMeta(key="a", num_text_tokens=1000))
    two = cm.breakdown(SampleMeta(key="b", num_text_tokens=2000))
    assert two["llm_linear"] == pytest.approx(2 * one["llm_linear"])
    assert two["llm_attention"] == pytest.approx(4 * one["llm_attention"])
    # Qwen3-4B: 36 layers of q/k/v/o (2560x4096, 2x 2560x1024, 4096x2560) + SwiGLU 3x 2560x9728
    per_token = 2 * 36 * (2560 * 4096 * 2 + 2 * 2560 * 1024 + 3 * 2560 * 9728)
    assert one["llm_linear"] == pytest.approx(1000 * per_token)


def test_pruning_cuts_vit_after_the_pruning_point_only():
    video = SampleMeta(key="v", modalities=(2,), frames=(64,), num_text_tokens=100)
    full, half = model(1.0).breakdown(video), model(0.5).breakdown(video)
    cfg = ModelConfig()
    pre, post = cfg.stts.prune_at + 2, cfg.vit.num_layers - cfg.stts.prune_at - 2
    d, i = cfg.vit.hidden_size, cfg.vit.intermediate_size
    block = 2 * (4 * d * d + 2 * d * i)
    embed = 2 * cfg.vit.patch_dim * d
    patches, kept = 64 * 729, 2592 * 9
    assert half["vit_linear"] == pytest.approx(
        patches * embed + block * (pre * patches + post * kept)
    )
    assert full["vit_linear"] == pytest.approx(
        patches * embed + block * cfg.vit.num_layers * patches
    )
    assert half["connector"] == pytest.approx(full["connector"] * 2592 / 5184)
    assert half["llm_linear"] < full["llm_linear"] and half["vit_attention"] < full["vit_attention"]
    assert half["scorer"] > 0


def test_images_are_not_pruned():
    image = SampleMeta(key="i", modalities=(1,), frames=(1,), num_text_tokens=10)
    assert model(0.3).breakdown(image) == model(1.0).breakdown(image) | {"scorer": 0.0}


def test_fit_weights_recovers_known_weights():
    cm = model()
    truth = CostWeights(
        vit_linear=2.0,
        scorer=2.0,
        connector=2.0,
        vit_attention=5.0,
        llm_linear=1.0,
        lm_head=1.0,
        llm_attention=3.0,
    )
    records = []
    for frames, text in [(8, 100), (32, 2000), (128, 50), (64, 500), (16, 6000), (200, 300)]:
        for keep in (1.0, 0.5):
            b = model(keep).breakdown(
                SampleMeta(
                    key="x",
                    modalities=(2,),
                    frames=(frames,),
                    num_text_tokens=text,
                    num_loss_tokens=text // 4,
                )
            )
            seconds = sum(getattr(truth, k) * b[k] for k in COMPONENTS) * 1e-15
            records.append((b, seconds))
    fitted = fit_weights(records)
    for k in COMPONENTS:
        assert getattr(fitted, k) == pytest.approx(getattr(truth, k), rel=1e-6)
    assert CostWeights.from_dict(fitted.to_dict()) == fitted
    assert cm.weighted(records[0][0]).total > 0
