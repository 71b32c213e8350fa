"""Every training-free pruner inside our model, on a real decoded clip (docs/pruners.md)."""

from __future__ import annotations

import pytest
import torch

from stts_train.config import load_config
from stts_train.constants import Modality
from stts_train.data.builders import make_batch
from stts_train.models.pruned_inference import build_pruner, forward_with_pruner
from stts_train.models.vlm import Molmo2VLM
from stts_train.pruning.base import available_pruners, get_pruner
from tests.model.test_hf_parity import real_frames

VIDEO, IMAGE = Modality.VIDEO, Modality.IMAGE
TRAINING_FREE = [name for name in available_pruners() if name != "stts"]


@pytest.fixture(scope="module")
def setup():
    # 126 px frames -> 9x9 patches -> 3x3 = 9 LLM tokens per frame, so budgets are non-trivial.
    job = load_config("configs/tiny_cpu.yaml", ["model.vit.image_size=126"])
    cfg = job.model
    torch.manual_seed(0)
    model = Molmo2VLM(cfg).eval()
    video = real_frames(cfg, num_frames=4)
    video = torch.cat([video, video.flip(0)])  # 8 real frames (FastVID segments need several)
    image = video[:1]
    pixels_FNC = torch.cat([video, image])
    batch = make_batch(cfg, [[(VIDEO, 8), (IMAGE, 1)]], seed=3, pixels_FNC=pixels_FNC)
    return cfg, model, batch


def test_every_pruner_runs_end_to_end(setup):
    cfg, model, batch = setup
    assert {
        "visionzip",
        "fastvid",
        "holitom",
        "stop_visionzip",
        "stop_fastvid",
        "stop_holitom",
        "random",
    } <= set(TRAINING_FREE)
    text_tokens = int((batch.input_ids_S != cfg.tokens.image_patch_id).sum())
    g = cfg.groups_per_frame
    full = forward_with_pruner(model, batch, get_pruner("random"), keep_ratio=1.0)
    assert full.stats["image_tokens_kept"] == 9 * g
    for name in TRAINING_FREE:
        out = forward_with_pruner(model, batch, build_pruner(name, g), keep_ratio=0.5)
        kept = out.stats["image_tokens_kept"]
        assert g < kept < 9 * g, f"{name} kept {kept} tokens"
        assert out.stats["llm_tokens"] == text_tokens + kept, name
        assert torch.isfinite(out.logits).all(), name
        # frame markers survive: every frame_start/frame_end of the prompt is still there
        for tid in (cfg.tokens.frame_start_id, cfg.tokens.frame_end_id):
            assert int((out.kept_input_ids == tid).sum()) == 8, name


def test_pruned_inference_is_deterministic_and_matches_keep_one(setup):
    cfg, model, batch = setup
    a = forward_with_pruner(model, batch, get_pruner("visionzip"), keep_ratio=0.5)
    b = forward_with_pruner(model, batch, get_pruner("visionzip"), keep_ratio=0.5)
    assert torch.equal(a.logits, b.logits)
    with torch.no_grad():
        unpruned = model(batch, return_logits=True, keep_ratio=1.0)
    full = forward_with_pruner(model, batch, get_pruner("visionzip"), keep_ratio=1.0)
    assert torch.allclose(full.logits, unpruned.logits, atol=1e-5)
