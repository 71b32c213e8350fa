"""`export_hf` writes what transformers serves: sharded weights (scorer inside), tokenizer, chat
template, processor and generation configs; greedy decoding there equals ours, pruning off."""

from __future__ import annotations

import dataclasses
import json
import types

import pytest
import torch
import transformers
from safetensors import safe_open

from stts_train.checkpoint.export import parse_size
from stts_train.checkpoint.hf import SCORER_PREFIX, export_hf, load_hf, load_into
from stts_train.config import config_from_dict
from stts_train.constants import Modality
from stts_train.data.template import tokenize_sample
from stts_train.errors import CheckpointError
from stts_train.eval.evaluator import Evaluator
from stts_train.models.tokenizer import (
    CHAT_TEMPLATE,
    build_subset,
    load_tokenizer,
    qwen_tokenizer,
    subset_overrides,
)
from stts_train.models.vlm import Molmo2VLM
from stts_train.pruning.stts import group_index
from tests.model.test_hf_parity import real_frames

pytestmark = pytest.mark.slow

QUESTION = "Which way do the bikes move?"
ANSWERS = ["left", "right", "up", "down", "nowhere"]


@pytest.fixture(scope="module")
def subset_model(tmp_path_factory, tiny_config):
    """A tiny model over a Qwen vocabulary subset, so it has a real tokenizer to export."""
    tmp = tmp_path_factory.mktemp("vocab")
    base_ids, vocab_size = build_subset([QUESTION, *ANSWERS, " 0.0 0.5 1.0 1.5 "])
    path = tmp / "vocabulary.json"
    path.write_text(json.dumps({"base_ids": base_ids}))
    overrides = dict(o.split("=", 1) for o in subset_overrides(str(path), base_ids, vocab_size))
    raw = json.loads(json.dumps(dataclasses.asdict(tiny_config)))
    for key, value in overrides.items():
        section = raw
        *parents, leaf = key.split(".")
        for p in parents:
            section = section[p]
        section[leaf] = value if leaf == "vocabulary" else int(value)
    raw["model"]["stts"].update(pruner="stts", keep_ratio=1.0)
    job = config_from_dict(raw)
    torch.manual_seed(7)
    model = Molmo2VLM(job.model).eval()
    with torch.no_grad():  # a scorer that is not the default init, so a dropped one shows
        for name, p in model.named_parameters():
            if name.startswith("vision.scorer."):
                p.add_(0.1 * torch.randn_like(p))
    return job, model


def clip_sample(cfg, num_frames: int = 2):
    return types.SimpleNamespace(
        key="bikes",
        pixels_FNC=real_frames(cfg, num_frames),
        frame_times_s=[0.5 * i for i in range(num_frames)],
        modality=Modality.VIDEO,
        question=QUESTION,
        answer="",
        choices=None,
        evidence=None,
        metadata={},
    )


def hf_video_inputs(cfg, pixels_FNC):
    gidx = group_index(cfg.vit.grid_size, cfg.connector.pool_size)
    num_frames, per_side = pixels_FNC.shape[0], cfg.vit.grid_size // cfg.connector.pool_size
    pooling = torch.arange(num_frames)[:, None, None] * cfg.vit.num_patches + gidx[None]
    return dict(
        pixel_values_videos=pixels_FNC,
        video_token_pooling=pooling.reshape(-1, gidx.shape[1]),
        video_grids=torch.tensor([[num_frames, per_side, per_side]]),
    )


def test_export_serves_in_transformers_with_our_greedy_decode(subset_model, tmp_path):
    job, model = subset_model
    cfg = job.model
    out = export_hf(model.state_dict(), cfg, tmp_path / "out", dtype="fp32", data=job.data)
    for name in (
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "preprocessor_config.json",
        "video_preprocessor_config.json",
        "processor_config.json",
        "README.md",
    ):
        assert (out / name).is_file(), name
    readme = (out / "README.md").read_text()
    assert "stts-train eval" in readme and "unpruned" in readme and "vLLM" in readme

    hf = transformers.Molmo2ForConditionalGeneration.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ours_tok = load_tokenizer(cfg)
    sample = clip_sample(cfg)
    ts = tokenize_sample(sample, ours_tok, cfg, with_answer=False)
    # The exported tokenizer and chat template give our prompt token for token.
    chat = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    rendered = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert rendered.count("<|video|>") == 1
    prompt_text = rendered.replace("<|video|>", _video_string(cfg, sample))
    assert tok(prompt_text, add_special_tokens=False)["input_ids"] == ts.input_ids.tolist()

    evaluator = Evaluator(model, ours_tok, pruner="none", keep_ratio=1.0)
    ours_text, _ = evaluator._greedy(sample, max_tokens=4)
    with torch.no_grad():
        generated = hf.generate(
            input_ids=ts.input_ids[None],
            **hf_video_inputs(cfg, sample.pixels_FNC),
            max_new_tokens=4,
            do_sample=False,
        )[0, len(ts.input_ids) :].tolist()
    if cfg.tokens.eos_id in generated:
        generated = generated[: generated.index(cfg.tokens.eos_id)]
    assert len(generated) == 4, generated  # four real tokens, not an immediate <|im_end|>
    assert tok.decode(generated, skip_special_tokens=False) == ours_text


def _video_string(cfg, sample) -> str:
    """What transformers' Molmo2Processor puts in place of <|video|> (get_video_string)."""
    patches = "<im_patch>" * cfg.groups_per_frame
    return "".join(
        f"{' ' if i else ''}{t:.1f} <frame_start>{patches}<frame_end>"
        for i, t in enumerate(sample.frame_times_s)
    )


def test_scorer_round_trips_inside_the_main_weights_in_bf16_shards(subset_model, tmp_path):
    job, model = subset_model
    cfg = job.model
    out = export_hf(model.state_dict(), cfg, tmp_path / "a", max_shard_bytes=200_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (out / "stts_scorer.safetensors").exists()
    scorer_names = [k for k in index["weight_map"] if k.startswith("model." + SCORER_PREFIX)]
    assert scorer_names and len(scorer_names) == sum(
        1 for k in model.state_dict() if k.startswith("vision.scorer.")
    )
    for shard in shards:
        with safe_open(str(out / shard), framework="pt") as f:
            assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in f.keys())  # noqa: SIM118
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"

    # load -> export -> load: the second export is tensor for tensor the first one.
    cfg_a, state_a = load_hf(out, cfg)
    expected = {k: v.to(torch.bfloat16).float() for k, v in model.state_dict().items()}
    assert set(state_a) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(state_a[name], tensor), name
    again = Molmo2VLM(cfg_a).eval()
    load_into(again, state_a)
    out_b = export_hf(again.state_dict(), cfg_a, tmp_path / "b", dtype="fp32")
    _, state_b = load_hf(out_b, cfg)
    for name, tensor in state_a.items():
        assert torch.equal(state_b[name], tensor), name

    # A released-style checkpoint without the `model.` prefix on the scorer loads the same.
    from safetensors.torch import load_file, save_file

    single = tmp_path / "c"
    single.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (single / name).write_bytes((out_b / name).read_bytes())
    merged = {}
    for shard in set(
        json.loads((out_b / "model.safetensors.index.json").read_text())["weight_map"].values()
    ):
        merged.update(load_file(str(out_b / shard)))
    renamed = {k.removeprefix("model.") if SCORER_PREFIX in k else k: v for k, v in merged.items()}
    save_file(renamed, str(single / "model.safetensors"))
    _, state_c = load_hf(single, cfg)
    for name, tensor in state_a.items():
        assert torch.equal(state_c[name], tensor), name


def test_shard_size_and_dtype_options():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("500MB") == 5 * 10**8
    assert parse_size("2GiB") == 2 * 2**30 and parse_size("1000") == 1000
    with pytest.raises(CheckpointError, match="max-shard-size"):
        parse_size("lots")
    with pytest.raises(CheckpointError, match="dtype"):
        export_hf({}, None, "/nonexistent", dtype="fp8")


def test_checkpoint_tokenizer_is_used_and_the_template_matches_ours(subset_model, tmp_path):
    job, model = subset_model
    out = export_hf(model.state_dict(), job.model, tmp_path / "out", dtype="fp32")
    cfg = dataclasses.replace(job.model, vocabulary="", hf_checkpoint=str(out))
    tok = load_tokenizer(cfg)
    assert type(tok).__name__ == "Tokenizer"  # the checkpoint's tokenizer.json, no rebuild
    sub = load_tokenizer(job.model)
    for text in [QUESTION, " 0.5 ", "<|im_start|>user\n<frame_start><im_patch><frame_end>"]:
        assert tok.encode(text, add_special_tokens=False).ids == sub.encode(text).ids
    assert (out / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    assert qwen_tokenizer().token_to_id("<|im_end|>") == 151645
