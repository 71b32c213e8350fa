"""Molmo2 checkpoints in every config layout transformers reads -> our model, exact logits (fp32).

The oracle is transformers' own `Molmo2ForConditionalGeneration.from_pretrained` on the same
directory: a tiny random Molmo2 (perturbed norms and biases) is saved, its config.json is rewritten
in the released hub layout or kept in transformers 5.23's, and both sides run a real decoded clip.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from stts_train.checkpoint.hf import hf_config_dict, load_hf, load_into
from stts_train.config import config_from_dict
from stts_train.config.hf_checkpoint import parse_molmo2_config
from stts_train.config.model import ModelConfig
from stts_train.errors import CheckpointError, ConfigError
from stts_train.models.vlm import Molmo2VLM
from tests.model.test_hf_parity import hf_logits, hf_model, our_logits, real_frames, video_prompt

# Token ids a transformers config.json does not carry (they come from the tokenizer).
TOKENIZER_IDS = {"pad_id": 0, "eos_id": 1, "image_col_id": 1027}
TOKEN_KEYS = (
    "image_start_token_id",
    "image_end_token_id",
    "image_patch_id",
    "low_res_image_start_token_id",
    "frame_start_token_id",
    "frame_end_token_id",
)


def tiny(tiny_config, **vit) -> ModelConfig:
    """The tiny test model, unpruned, with RoPE theta and RMS eps unlike transformers' defaults."""
    base = tiny_config.model
    return dataclasses.replace(
        base,
        vit=dataclasses.replace(base.vit, **vit),
        llm=dataclasses.replace(base.llm, rope_theta=12345.0, rms_norm_eps=1e-5),
        stts=dataclasses.replace(base.stts, pruner="none", keep_ratio=1.0),
    )


def saved_config(cfg: ModelConfig) -> dict:
    """config.json exactly as transformers 5.23 writes it for `cfg`, without our export's marker."""
    hf = json.loads(transformers.Molmo2Config(**hf_config_dict(cfg)).to_json_string())
    hf.pop("stts_image_attention")
    return hf


def released_layout(hf: dict, extra_layers: int) -> dict:
    """A 5.23 config.json rewritten as the hub checkpoints write it: `vit_config` declaring
    `extra_layers` more ViT layers than the weights hold, negative `vit_layers`, flat RoPE keys."""
    v, a, t = hf["vision_config"], hf["adapter_config"], hf["text_config"]
    depth = v["num_hidden_layers"] + extra_layers
    same = (
        "hidden_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "hidden_act",
        "intermediate_size",
    )
    vit = {k: v[k] for k in same + ("layer_norm_eps",)}
    vit.update(
        num_hidden_layers=depth,
        image_default_input_size=v["image_size"],
        image_patch_size=v["patch_size"],
        image_num_pos=v["num_position_embeddings"],
        attention_dropout=0.0,
        residual_dropout=0.0,
        float32_attention=True,
        initializer_range=0.02,
        attn_implementation="sdpa",
    )
    adapter = {k: a[k] for k in same + ("text_hidden_size",)}
    real = v["num_hidden_layers"]
    adapter.update(
        vit_layers=[layer % real - depth for layer in a["vision_feature_layer"]],
        pooling_attention_mask=True,
        attention_dropout=0.0,
        residual_dropout=0.0,
        image_feature_dropout=0.0,
        float32_attention=True,
    )
    text = {
        k: t[k]
        for k in same
        + (
            "vocab_size",
            "additional_vocab_size",
            "num_hidden_layers",
            "max_position_embeddings",
            "qk_norm_type",
            "norm_after",
        )
    }
    text.update(
        qkv_bias=t["attention_bias"],
        rope_theta=t["rope_parameters"]["rope_theta"],
        rope_scaling=None,
        rope_scaling_layers=None,
        use_qk_norm=True,
        layer_norm_eps=t["rms_norm_eps"],
        embedding_dropout=0.0,
        attention_dropout=0.0,
        residual_dropout=0.0,
        use_cache=True,
        tie_word_embeddings=False,
    )
    top = {k: hf[k] for k in TOKEN_KEYS}
    top.update(
        model_type="molmo2",
        architectures=["Molmo2ForConditionalGeneration"],
        vit_config=vit,
        adapter_config=adapter,
        text_config=text,
        image_col_id=1027,
        image_low_res_id=1030,
        use_frame_special_tokens=True,
        tie_word_embeddings=False,
    )
    return top


def write_config(path, hf: dict) -> None:
    (path / "config.json").write_text(json.dumps(hf, indent=2))


def from_checkpoint(path) -> ModelConfig:
    """The model config a user gets with only `model.hf_checkpoint` (and tokenizer ids) set."""
    return config_from_dict(
        {
            "model": {
                "hf_checkpoint": str(path),
                "tokens": dict(TOKENIZER_IDS),
                "stts": {"pruner": "none", "keep_ratio": 1.0},
            }
        }
    ).model


def assert_same_logits(path, cfg: ModelConfig, num_frames: int = 3) -> float:
    """transformers' from_pretrained(path) vs our model loaded from path; returns max |diff|."""
    reference, info = transformers.Molmo2ForConditionalGeneration.from_pretrained(
        path, dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    _, state = load_hf(path, cfg)
    ours = Molmo2VLM(cfg).eval()
    load_into(ours, state)
    pixels = real_frames(cfg, num_frames)
    ids = video_prompt(cfg, num_frames, torch.Generator().manual_seed(1))
    expected = hf_logits(reference.eval(), cfg, ids, pixels, bidirectional=True)
    diff = (our_logits(ours, ids, pixels) - expected).abs().max().item()
    assert diff < 1e-4, diff
    return diff


def test_released_layout_loads_with_the_logits_of_transformers(tiny_config, tmp_path):
    # 378 px / 14 px: the released 27x27 patch grid (81 groups of 3x3 per frame).
    built = tiny(tiny_config, image_size=378, num_layers=6, feature_layers=(5, 3))
    original = hf_model(built, tmp_path)
    path = tmp_path / "hf"
    write_config(path, released_layout(saved_config(built), extra_layers=2))
    hf = json.loads((path / "config.json").read_text())
    assert hf["vit_config"]["num_hidden_layers"] == 8 and hf["adapter_config"]["vit_layers"] == [
        -3,
        -5,
    ]

    # transformers trims the 8 declared layers to 6 and its model is the one that was saved.
    loaded = transformers.Molmo2ForConditionalGeneration.from_pretrained(path).eval()
    assert loaded.config.vision_config.num_hidden_layers == 6
    assert loaded.config.adapter_config.vision_feature_layer == [5, 3]
    pixels = real_frames(built, 2)
    ids = video_prompt(built, 2, torch.Generator().manual_seed(3))
    assert torch.equal(
        hf_logits(loaded, built, ids, pixels, True), hf_logits(original, built, ids, pixels, True)
    )

    cfg = from_checkpoint(path)
    assert cfg.vit == built.vit
    assert cfg.connector == built.connector
    assert cfg.llm == dataclasses.replace(built.llm, image_attention="bidirectional")
    assert cfg.tokens.image_low_id == 1030 and cfg.tokens.image_col_id == 1027
    assert_same_logits(path, cfg)


def test_transformers_layout_sharded_bf16_with_negative_feature_layers(
    tiny_config, tmp_path, caplog
):
    built = tiny(tiny_config, num_layers=8, feature_layers=(-3, -5))
    original = hf_model(built, tmp_path)
    path = tmp_path / "sharded"
    original.to(torch.bfloat16).save_pretrained(path, max_shard_size="100KB")
    write_config(path, saved_config(built))
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1

    cfg = from_checkpoint(path)
    assert cfg.vit == built.vit and cfg.vit.feature_layers == (-3, -5) and cfg.vit.num_layers == 8
    assert cfg.llm.image_attention == "bidirectional"
    with caplog.at_level(logging.INFO, logger="stts_train.checkpoint.hf_weights"):
        assert_same_logits(path, cfg)
    assert re.search(r"bfloat16.*cast to float32", caplog.text), caplog.text


def test_image_block_tokens_are_those_transformers_processor_marks():
    from stts_train.models.tokenizer import qwen_tokenizer

    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=qwen_tokenizer())
    processor = transformers.Molmo2Processor.__new__(transformers.Molmo2Processor)
    # Molmo2Processor lists its block tokens, then ProcessorMixin refuses the missing image
    # processor (it needs torchvision); the list is what we compare with.
    with pytest.raises(TypeError, match="image_processor"):
        processor.__init__(tokenizer=tokenizer)
    # Our defaults are the Qwen-vocabulary ids Molmo2 uses; <im_low> comes from config.json.
    tokens = dataclasses.replace(ModelConfig().tokens, image_low_id=151942)
    assert sorted(tokens.image_block_ids) == sorted(processor.image_token_ids)


# --------------------------------------------------------------------------------------------------
# config.json parsing: same reading as transformers.Molmo2Config, refusals named
def transformers_reading(hf: dict) -> dict:
    c = transformers.Molmo2Config(**json.loads(json.dumps(hf)))
    v, a, t = c.vision_config, c.adapter_config, c.text_config
    return {
        "vit": {
            "image_size": v.image_size[0],
            "patch_size": v.patch_size,
            "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size,
            "num_heads": v.num_attention_heads,
            "head_dim": v.head_dim,
            "num_layers": v.num_hidden_layers,
            "layer_norm_eps": v.layer_norm_eps,
            "feature_layers": tuple(a.vision_feature_layer),
        },
        "connector": {
            "intermediate_size": a.intermediate_size,
            "pooling_num_heads": a.num_attention_heads,
            "pooling_head_dim": a.head_dim,
        },
        "llm": {
            "vocab_size": t.vocab_size,
            "additional_vocab_size": t.additional_vocab_size,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_layers": t.num_hidden_layers,
            "num_heads": t.num_attention_heads,
            "num_kv_heads": t.num_key_value_heads,
            "head_dim": t.head_dim,
            "rope_theta": float(t.rope_parameters["rope_theta"]),
            "rms_norm_eps": t.rms_norm_eps,
            "qk_norm": True,
            "tie_word_embeddings": False,
        },
        "tokens": {
            "image_start_id": c.image_start_token_id,
            "image_end_id": c.image_end_token_id,
            "image_patch_id": c.image_patch_id,
            "low_res_image_start_id": c.low_res_image_start_token_id,
            "frame_start_id": c.frame_start_token_id,
            "frame_end_id": c.frame_end_token_id,
            # released-only keys, kept by transformers as plain attributes
            **{
                ours: getattr(c, key)
                for key, ours in (
                    ("image_col_id", "image_col_id"),
                    ("image_low_res_id", "image_low_id"),
                )
                if getattr(c, key, None) is not None
            },
        },
    }


@pytest.fixture(scope="module")
def layouts():
    from stts_train.config import load_config
    from tests.conftest import REPO

    cfg = tiny(
        load_config(REPO / "configs" / "tiny_cpu.yaml"), num_layers=8, feature_layers=(-3, -5)
    )
    new = saved_config(cfg)
    return {"5.23": new, "released": released_layout(new, extra_layers=2)}


def edit(hf: dict, section: str | None, **values) -> dict:
    out = json.loads(json.dumps(hf))
    (out if section is None else out[section]).update(values)
    return out


def without(hf: dict, section: str, key: str) -> dict:
    out = json.loads(json.dumps(hf))
    del out[section][key]
    return out


VARIANTS = {
    "5.23": lambda L: L["5.23"],
    "released": lambda L: L["released"],
    # vision_config wins over vit_config, but vit_config's presence still trims the ViT
    "both vision configs": lambda L: edit(L["5.23"], None, vit_config=L["released"]["vit_config"]),
    # released aliases win over the 5.23 names
    "aliases win": lambda L: edit(
        edit(L["5.23"], "text_config", layer_norm_eps=1e-3, rope_theta=9.0),
        "adapter_config",
        vit_layers=[-1, 2],
    ),
    "vision aliases win": lambda L: edit(
        L["5.23"], "vision_config", image_default_input_size=[126, 126], image_num_pos=81
    ),
    "rope_parameters over flat rope_theta": lambda L: edit(
        L["5.23"], "text_config", rope_theta=3.0
    ),
    "no rope theta anywhere": lambda L: without(L["released"], "text_config", "rope_theta"),
    "released defaults": lambda L: {
        "model_type": "molmo2",
        "vit_config": {"num_hidden_layers": 27},
        "adapter_config": {"vit_layers": [-3, -9], "text_hidden_size": 4096},
    },
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_config_is_read_as_transformers_reads_it(layouts, variant):
    hf = VARIANTS[variant](layouts)
    assert parse_molmo2_config(hf).sections == transformers_reading(hf)


REFUSED = [  # (layout, section, field, value): one per family of math we do not implement
    ("released", "text_config", "hidden_act", "gelu"),
    ("5.23", "vision_config", "hidden_act", "quick_gelu"),
    ("5.23", "adapter_config", "hidden_act", "gelu"),
    ("released", "text_config", "rope_scaling", {"rope_type": "linear", "factor": 2.0}),
    (
        "5.23",
        "text_config",
        "rope_parameters",
        {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6},
    ),
    ("released", "text_config", "qkv_bias", True),
    ("5.23", "text_config", "attention_bias", True),
    ("5.23", "vision_config", "attention_bias", False),
    ("released", "adapter_config", "mlp_bias", True),
    ("5.23", "text_config", "norm_after", True),
    ("released", "text_config", "qk_norm_type", "olmo"),
    ("released", "text_config", "use_qk_norm", False),
    ("5.23", None, "tie_word_embeddings", True),
    ("released", "text_config", "tie_word_embeddings", True),
    ("released", "text_config", "residual_dropout", 0.1),
    ("5.23", "vision_config", "num_key_value_heads", 1),
    ("released", "vit_config", "image_num_pos", 577),
    ("released", "vit_config", "image_default_input_size", [84, 56]),
    ("released", "adapter_config", "vit_layers", [-11, 2]),  # 10 declared layers
    ("released", None, "use_frame_special_tokens", False),
]


@pytest.mark.parametrize(
    "layout,section,name,value", REFUSED, ids=[f"{r[0]}:{r[1] or 'top'}.{r[2]}" for r in REFUSED]
)
def test_unsupported_field_is_a_checkpoint_error_naming_it(layouts, layout, section, name, value):
    hf = edit(layouts[layout], section, **{name: value})
    key = f"{section}.{name}" if section else name
    with pytest.raises(CheckpointError, match=re.escape(f"{key}={value!r}")):
        parse_molmo2_config(hf)


# --------------------------------------------------------------------------------------------------
# the checkpoint defines the model; weights that do not fit fail by name
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny transformers Molmo2 saved unsharded (fp32), for tests that tamper with copies."""
    from stts_train.config import load_config
    from tests.conftest import REPO

    cfg = tiny(load_config(REPO / "configs" / "tiny_cpu.yaml"))
    tmp = tmp_path_factory.mktemp("molmo2")
    hf_model(cfg, tmp)
    write_config(tmp / "hf", saved_config(cfg))
    return tmp / "hf", cfg


def test_config_shape_that_disagrees_with_the_checkpoint_is_a_config_error(saved, tmp_path):
    path, cfg = saved
    model = {
        "hf_checkpoint": str(path),
        "tokens": dict(TOKENIZER_IDS),
        "llm": {"hidden_size": 128, "num_layers": cfg.llm.num_layers},
        "vit": {"feature_layers": [-1, -3]},
    }
    with pytest.raises(ConfigError) as err:
        config_from_dict({"model": model})
    message = str(err.value)
    assert "model.llm.hidden_size=128" in message and "64 (text_config.hidden_size)" in message
    assert "feature_layers" not in message  # [-1, -3] are the same blocks as [5, 3]
    # Agreeing keys are fine; image attention is a choice the config may make.
    model["llm"] = {"num_layers": cfg.llm.num_layers, "image_attention": "causal"}
    assert config_from_dict({"model": model}).model.llm.image_attention == "causal"
    # A model config built some other way is checked when its weights are loaded.
    wrong = dataclasses.replace(
        cfg, hf_checkpoint=str(path), vit=dataclasses.replace(cfg.vit, hidden_size=64, head_dim=32)
    )
    with pytest.raises(
        ConfigError, match=re.escape("model.vit.hidden_size=64 but the checkpoint has 32")
    ):
        load_hf(path, wrong)


def tampered(saved, tmp_path, change) -> str:
    path = tmp_path / "ckpt"
    shutil.copytree(saved[0], path)
    state = load_file(str(path / "model.safetensors"))
    change(state)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


BAD_WEIGHTS = {
    "fused qkv bias": (
        lambda s: s.__setitem__(
            "model.transformer.blocks.0.self_attn.att_proj.bias", torch.zeros(128)
        ),
        "att_proj.bias",
    ),
    "unknown tensor": (
        lambda s: s.__setitem__("model.vision_backbone.image_vit.extra.weight", torch.zeros(2)),
        "image_vit.extra.weight",
    ),
    "wrong shape": (
        lambda s: s.__setitem__("model.transformer.ln_f.weight", torch.ones(32)),
        "llm.norm.weight (32,) (config.json implies (64,))",
    ),
    "missing tensor": (
        lambda s: s.pop("model.vision_backbone.image_projector.w1.weight"),
        "missing: connector.image_projector.gate_proj.weight",
    ),
    "quantized": (
        lambda s: s.__setitem__("lm_head.weight", s["lm_head.weight"].to(torch.int8)),
        "lm_head.weight is torch.int8",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_WEIGHTS))
def test_weights_that_do_not_fit_are_a_checkpoint_error_naming_the_tensor(saved, tmp_path, case):
    change, expected = BAD_WEIGHTS[case]
    path = tampered(saved, tmp_path, change)
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        load_hf(path, saved[1])


def test_missing_shard_is_a_checkpoint_error(saved, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(saved[0], path)
    names = load_file(str(path / "model.safetensors"))
    index = {"metadata": {}, "weight_map": {k: "model-00002-of-00002.safetensors" for k in names}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(
        CheckpointError, match="lists shard 'model-00002-of-00002.safetensors', which is missing"
    ):
        load_hf(path, saved[1])


def test_scorer_under_reference_names_in_the_main_weights_loads(saved, tmp_path):
    cfg = saved[1]
    with_scorer = dataclasses.replace(cfg, stts=dataclasses.replace(cfg.stts, pruner="stts"))
    scorer = {
        k: v
        for k, v in Molmo2VLM(with_scorer).state_dict().items()
        if k.startswith("vision.scorer.")
    }
    for prefix in ("model.", ""):
        name = prefix + "vision_backbone.image_vit.transformer.temporal_token_scorer."

        def add(state, name=name):
            state.update({name + k[len("vision.scorer.") :]: v + 1.0 for k, v in scorer.items()})

        path = tampered(saved, tmp_path / (prefix.strip(".") or "bare"), add)
        _, state = load_hf(path, with_scorer)
        for k, v in scorer.items():
            assert torch.equal(state[k], v + 1.0), k
