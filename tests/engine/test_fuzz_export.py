"""Mixed-modality ranks under ZeRO-3 (no hang), export round trip through transformers, NaN stop."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from workers import toy_config, train_worker

from stts_train.constants import Modality
from stts_train.data.synthetic import SampleSpec
from stts_train.testing import run_distributed_test

from .test_parity import tiny_config

pytestmark = pytest.mark.slow  # gloo ranks (run_distributed_test)


def test_mixed_modality_ranks_finish_under_zero3(tmp_path):
    # keep_ratio 0.5: a 2-frame video loses every prunable group (fully pruned after frame 0)
    force = {
        0: SampleSpec(Modality.VIDEO, 4),
        1: SampleSpec(Modality.IMAGE, 1),
        2: SampleSpec(Modality.TEXT, 0),
        3: SampleSpec(Modality.VIDEO, 2),
    }
    cfg = tiny_config(str(tmp_path), train={"num_steps": 2}, parallel={"zero_stage": 3})
    out = run_distributed_test(
        train_worker,
        4,
        (cfg,),
        kwargs={"use_toy": False, "gather": False, "data_kwargs": {"force": force}},
        timeout_s=300,
    )
    assert [o["code"] for o in out] == [0, 0, 0, 0]
    assert all(math.isfinite(x) for x in out[0]["losses"]) and len(out[0]["losses"]) == 2
    kept = [m["pruner/keep_ratio"] for m in out[0]["metrics"]]
    assert all(0 < k < 1 for k in kept)


def test_export_tp2_zero3_round_trips_through_transformers(tmp_path):
    import transformers

    from stts_train.checkpoint.consolidate import consolidate_path
    from stts_train.checkpoint.hf import load_hf, load_into
    from stts_train.cli import main
    from stts_train.config import config_from_dict
    from stts_train.models.vlm import Molmo2VLM
    from tests.model.test_hf_parity import hf_logits, our_logits, video_prompt

    run_dir = tmp_path / "run"
    cfg_dict = tiny_config(
        str(run_dir),
        train={"num_steps": 2},
        parallel={"zero_stage": 3, "tensor_parallel": 2},
        checkpoint={"at_end": True},
    )
    out = run_distributed_test(
        train_worker, 2, (cfg_dict,), kwargs={"use_toy": False}, timeout_s=300
    )
    live = out[0]["weights"]
    state, meta, _ = consolidate_path(str(run_dir))
    assert meta["step"] == 2 and meta["tp_size"] == 2
    assert set(live) <= set(state)
    for k, v in live.items():
        assert torch.equal(state[k], v), k

    assert main(["export", str(run_dir), str(tmp_path / "hf"), "--dtype", "fp32"]) == 0
    hf = transformers.Molmo2ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    cfg = config_from_dict(cfg_dict).model
    cfg = dataclasses.replace(cfg, stts=dataclasses.replace(cfg.stts, keep_ratio=1.0))
    cfg_loaded, _ = load_hf(tmp_path / "hf", cfg)
    assert cfg_loaded.llm == cfg.llm
    ours = Molmo2VLM(cfg).eval()
    load_into(ours, state)
    gen = torch.Generator().manual_seed(5)
    pixels = torch.randn(2, cfg.vit.num_patches, cfg.vit.patch_dim, generator=gen)
    ids = video_prompt(cfg, 2, gen)
    expected = hf_logits(
        hf, cfg, ids, pixels, bidirectional=cfg.llm.image_attention == "bidirectional"
    )
    actual = our_logits(ours, ids, pixels)
    assert (actual - expected).abs().max().item() < 1e-4


def test_nonfinite_loss_stops_with_message_and_keeps_last_checkpoint(tmp_path):
    # sample syn-12 is in step 4 (2 ranks x 2 samples per step): steps 1-3 fine, checkpoint at 2
    cfg = toy_config(str(tmp_path), train={"num_steps": 6}, checkpoint={"every": 2})
    with pytest.raises(RuntimeError, match="non-finite loss"):
        run_distributed_test(train_worker, 2, (cfg,), env={"TOY_NAN_KEY": "syn-12"}, timeout_s=300)
    ckpts = tmp_path / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step-00000002"
    from stts_train.checkpoint.consolidate import consolidate

    state, meta, _ = consolidate(ckpts / "step-00000002")
    assert meta["step"] == 2 and all(torch.isfinite(v).all() for v in state.values())
