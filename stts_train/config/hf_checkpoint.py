"""A Molmo2 `config.json`, in any layout transformers' `Molmo2Config` reads, -> our ModelConfig.

Two layouts exist. transformers 5.23 writes `vision_config`, `adapter_config.vision_feature_layer`
and `text_config.rope_parameters`; the released hub checkpoints write `vit_config` (with
`image_default_input_size`, `image_patch_size`, `image_num_pos`), `adapter_config.vit_layers`,
and a text config with flat `rope_theta`/`rope_scaling`, `qkv_bias`, `use_qk_norm` and
`layer_norm_eps`. This module implements the contract of transformers 5.23's
`configuration_molmo2.py` without importing transformers:

- a released key is an alias that wins over its 5.23 name when both are present;
- `vision_config` wins over `vit_config`;
- whenever a non-null `vit_config` key is present, every feature-layer index is taken modulo the
  declared ViT depth and the ViT is trimmed to the deepest of them + 1 (the released weights stop
  there: 27 layers declared, 25 kept). Without it, negative indices stay negative and count back
  from the last of all `num_hidden_layers` blocks;
- a missing field takes transformers' default.

One deliberate difference: a feature-layer index outside [-depth, depth) is a CheckpointError
(transformers silently wraps it around). Any field that changes the math and that our model does
not implement raises CheckpointError naming the field and its value; fields that transformers'
Molmo2 ignores too are accepted; keys nobody knows are logged, never dropped silently.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from stts_train.config.model import ModelConfig
from stts_train.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

# transformers 5.23 defaults (configuration_molmo2.py); `None` = derived from other fields.
_VISION_DEFAULTS = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 25,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "head_dim": 72,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "image_size": None,
    "patch_size": 14,
    "num_position_embeddings": None,
    "num_channels": 3,
    "attention_dropout": 0.0,
    "attention_bias": True,
    "residual_dropout": 0.0,
}
_ADAPTER_DEFAULTS = {
    "vision_feature_layer": None,
    "hidden_size": 1152,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "head_dim": 72,
    "attention_dropout": 0.0,
    "attention_bias": True,
    "hidden_act": "silu",
    "intermediate_size": 18944,
    "text_hidden_size": 3584,
    "mlp_bias": False,
    "residual_dropout": 0.0,
    "image_feature_dropout": 0.0,
}
_TEXT_DEFAULTS = {
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "additional_vocab_size": 128,
    "attention_bias": False,
    "qk_norm_type": "qwen3",
    "num_hidden_layers": 36,
    "intermediate_size": 12288,
    "hidden_act": "silu",
    "attention_dropout": 0.0,
    "rms_norm_eps": 1e-6,
    "norm_after": False,
    "tie_word_embeddings": False,
    "use_qk_norm": True,
    "embedding_dropout": 0.0,
    "residual_dropout": 0.0,
}
_TOP_DEFAULTS = {
    "image_start_token_id": 151936,
    "low_res_image_start_token_id": 151940,
    "image_end_token_id": 151937,
    "image_patch_id": 151938,
    "frame_start_token_id": 151943,
    "frame_end_token_id": 151944,
    "tie_word_embeddings": False,
    "use_frame_special_tokens": True,
    "image_col_id": None,
    "image_low_res_id": None,
    "stts_image_attention": "bidirectional",
}
# Released name -> transformers 5.23 name; the released name wins when both are given.
_VISION_ALIASES = {
    "image_default_input_size": "image_size",
    "image_patch_size": "patch_size",
    "image_num_pos": "num_position_embeddings",
}
_ADAPTER_ALIASES = {"vit_layers": "vision_feature_layer"}
_TEXT_ALIASES = {"qkv_bias": "attention_bias", "layer_norm_eps": "rms_norm_eps"}
_DEFAULT_ROPE_THETA = 10000.0

# Accepted and without effect on our math (or transformers' either): bookkeeping, inference-only
# switches, `float32_attention` (attention precision of the original code; transformers ignores
# it), `pooling_attention_mask` (masks padded pooling slots; our 3x3 groups have none), and
# `rope_scaling_layers`/`max_position_embeddings` (only matter for a scaled RoPE, refused below).
_IGNORED = {
    "model_type",
    "architectures",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "_name_or_path",
    "auto_map",
    "initializer_range",
    "use_cache",
    "attn_implementation",
    "float32_attention",
    "pooling_attention_mask",
    "rope_scaling_layers",
    "max_position_embeddings",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "id2label",
    "label2id",
    "problem_type",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "vision_config",
    "vit_config",
    "adapter_config",
    "text_config",
}
_TOKEN_FIELDS = {  # config.json key -> SpecialTokens field
    "image_start_token_id": "image_start_id",
    "image_end_token_id": "image_end_id",
    "image_patch_id": "image_patch_id",
    "low_res_image_start_token_id": "low_res_image_start_id",
    "frame_start_token_id": "frame_start_id",
    "frame_end_token_id": "frame_end_id",
    "image_col_id": "image_col_id",
    "image_low_res_id": "image_low_id",
}
_IMAGE_ATTENTION = ("causal", "bidirectional")


@dataclass
class _Section:
    """One (sub-)config of config.json, read with transformers' aliases and defaults."""

    name: str
    raw: dict[str, Any]
    defaults: dict[str, Any]
    aliases: dict[str, str] = field(default_factory=dict)
    read: set[str] = field(default_factory=set)

    def key(self, name: str) -> str:
        """The key of the file that supplies field `name` (its released alias if present)."""
        for alias, target in self.aliases.items():
            if target == name and alias in self.raw:
                return alias
        return name

    def get(self, name: str) -> Any:
        key = self.key(name)
        self.read.update((key, name))
        value = self.raw.get(key)
        return self.defaults[name] if value is None else value

    def where(self, name: str) -> str:
        return f"{self.name}.{self.key(name)}" if self.name else self.key(name)

    def require(self, name: str, allowed: tuple, why: str) -> Any:
        value = self.get(name)
        if value not in allowed:
            raise CheckpointError(f"{self.where(name)}={value!r} is not supported: {why}")
        return value

    def no_dropout(self, *names: str) -> None:
        for name in names:
            self.require(name, (0, 0.0), "stts-train has no dropout; set it to 0.0 to fine-tune")

    def unknown(self) -> list[str]:
        return [self.where(k) for k in self.raw if k not in self.read and k not in _IGNORED]


@dataclass(frozen=True)
class Molmo2Architecture:
    """What a checkpoint's config.json fixes: ModelConfig fields by section, plus behaviour."""

    sections: dict[str, dict[str, Any]]
    """'vit' / 'connector' / 'llm' / 'tokens' -> {field: value} of our config dataclasses."""
    origin: dict[str, str]
    """'vit.num_layers' -> the config.json key (and note) that value came from."""
    image_attention: str
    """Default `model.llm.image_attention`: bidirectional for Molmo2 checkpoints (what their
    processor asks for), or what an stts-train export recorded in `stts_image_attention`."""


def _sub(hf: dict, name: str, defaults: dict, aliases: dict) -> _Section:
    raw = hf.get(name)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise CheckpointError(f"{name} must be a mapping, found {raw!r}")
    return _Section(name, raw, defaults, aliases)


def parse_molmo2_config(hf: dict) -> Molmo2Architecture:
    """Our architecture from a Molmo2 config.json dict (either layout); see the module doc."""
    if hf.get("model_type") != "molmo2":
        raise CheckpointError(f"model_type={hf.get('model_type')!r}, expected 'molmo2'")
    top = _Section("", hf, _TOP_DEFAULTS)
    legacy = hf.get("vit_config") is not None
    vision = _sub(
        hf,
        "vision_config" if hf.get("vision_config") is not None else "vit_config",
        _VISION_DEFAULTS,
        _VISION_ALIASES,
    )
    adapter = _sub(hf, "adapter_config", _ADAPTER_DEFAULTS, _ADAPTER_ALIASES)
    text = _sub(hf, "text_config", _TEXT_DEFAULTS, _TEXT_ALIASES)
    origin: dict[str, str] = {}
    vit, connector, llm = _vision(vision, origin), {}, {}
    vit.update(_feature_layers(adapter, vision, vit["num_layers"], legacy, origin))

    # adapter: attention pooling over the concatenated layers, then a SwiGLU projector
    adapter.require("hidden_act", ("silu",), "the projector is SwiGLU with SiLU")
    adapter.require("attention_bias", (True,), "the pooling attention has q/k/v/o biases")
    adapter.require("mlp_bias", (False,), "the projector has no biases")
    adapter.no_dropout("attention_dropout", "residual_dropout", "image_feature_dropout")
    for ours, hf_name in (
        ("intermediate_size", "intermediate_size"),
        ("pooling_num_heads", "num_attention_heads"),
        ("pooling_head_dim", "head_dim"),
    ):
        connector[ours] = _take(origin, f"connector.{ours}", adapter, hf_name)
    for name, expected, why in (
        ("num_key_value_heads", connector["pooling_num_heads"], "num_attention_heads (no GQA)"),
        ("hidden_size", vit["hidden_size"], f"{vision.where('hidden_size')}"),
    ):
        adapter.require(name, (expected,), f"stts-train needs it equal to {why}")

    llm.update(_text(text, origin))
    adapter.require(
        "text_hidden_size",
        (llm["hidden_size"],),
        f"stts-train needs it equal to {text.where('hidden_size')}",
    )
    top.require(
        "tie_word_embeddings",
        (False,),
        "transformers' Molmo2 never ties lm_head to the embeddings (they differ in size)",
    )
    top.require(
        "use_frame_special_tokens",
        (True,),
        "stts-train wraps every video frame in <frame_start>/<frame_end>",
    )
    image_attention = top.require(
        "stts_image_attention", _IMAGE_ATTENTION, "use causal or bidirectional"
    )

    tokens = {}
    for key, ours in _TOKEN_FIELDS.items():
        if top.get(key) is not None:
            tokens[ours] = _take(origin, f"tokens.{ours}", top, key)
    unknown = top.unknown() + vision.unknown() + adapter.unknown() + text.unknown()
    if unknown:
        log.warning(
            "config.json keys unknown to stts-train, not used (check they do not change "
            "the model): %s",
            ", ".join(unknown),
        )
    sections = {"vit": vit, "connector": connector, "llm": llm, "tokens": tokens}
    return Molmo2Architecture(sections, origin, image_attention)


def _take(origin: dict[str, str], ours: str, sec: _Section, name: str, kind: type = int) -> Any:
    """Field `name` of `sec` as `kind`, remembering where our field `ours` came from."""
    origin[ours] = sec.where(name)
    value = sec.get(name)
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise CheckpointError(f"{sec.where(name)}={value!r} is not a {kind.__name__}") from None


def _vision(v: _Section, origin: dict[str, str]) -> dict[str, Any]:
    v.require("hidden_act", ("gelu_pytorch_tanh",), "the ViT MLP uses tanh-approximated GELU")
    v.require("attention_bias", (True,), "the ViT attention has q/k/v/o biases")
    v.require("num_channels", (3,), "frames are RGB")
    v.no_dropout("attention_dropout", "residual_dropout")
    size = v.get("image_size") or [378, 378]
    size = [size, size] if isinstance(size, int) else list(size)
    patch = _take(origin, "vit.patch_size", v, "patch_size")
    if len(size) != 2 or size[0] != size[1] or size[0] % patch:
        raise CheckpointError(
            f"{v.where('image_size')}={size} is not supported: stts-train needs a "
            f"square input that is a multiple of the patch size {patch}"
        )
    grid = size[0] // patch
    if v.get("num_position_embeddings") not in (None, grid * grid):
        raise CheckpointError(
            f"{v.where('num_position_embeddings')}="
            f"{v.get('num_position_embeddings')!r} is not supported: stts-train needs "
            f"one position embedding per patch of the {grid}x{grid} grid"
        )
    origin["vit.image_size"] = v.where("image_size")
    out = {"image_size": size[0], "patch_size": patch}
    for ours, hf_name, kind in (
        ("hidden_size", "hidden_size", int),
        ("intermediate_size", "intermediate_size", int),
        ("num_heads", "num_attention_heads", int),
        ("head_dim", "head_dim", int),
        ("num_layers", "num_hidden_layers", int),
        ("layer_norm_eps", "layer_norm_eps", float),
    ):
        out[ours] = _take(origin, f"vit.{ours}", v, hf_name, kind)
    v.require("num_key_value_heads", (out["num_heads"],), "the ViT has no GQA")
    if out["num_heads"] * out["head_dim"] != out["hidden_size"]:
        raise CheckpointError(
            f"{v.where('head_dim')}={out['head_dim']} x {v.where('num_attention_heads')}"
            f"={out['num_heads']} != hidden_size {out['hidden_size']}: not supported"
        )
    return out


def _feature_layers(
    adapter: _Section, vision: _Section, depth: int, legacy: bool, origin: dict[str, str]
) -> dict[str, Any]:
    """feature_layers and num_layers, trimmed as transformers trims the released layout."""
    where = adapter.where("vision_feature_layer")
    layers = adapter.get("vision_feature_layer") or [24, 18]
    if (
        not isinstance(layers, (list, tuple))
        or not layers
        or not all(type(x) is int for x in layers)
    ):
        raise CheckpointError(f"{where}={layers!r} must be a non-empty list of layer indices")
    if not all(-depth <= x < depth for x in layers):
        raise CheckpointError(
            f"{where}={list(layers)} must index the {depth} layers of "
            f"{vision.where('num_hidden_layers')} (each in [-{depth}, {depth}))"
        )
    origin["vit.feature_layers"] = where
    if not legacy:
        return {"feature_layers": tuple(layers)}
    layers = tuple(x % depth for x in layers)
    origin["vit.num_layers"] = (
        f"{vision.where('num_hidden_layers')}={depth} trimmed to the "
        f"deepest of {where} + 1, as transformers does"
    )
    return {"feature_layers": layers, "num_layers": max(layers) + 1}


def _text(t: _Section, origin: dict[str, str]) -> dict[str, Any]:
    t.require("hidden_act", ("silu",), "the LLM MLP is SwiGLU with SiLU")
    t.require("attention_bias", (False,), "the Qwen3 LLM has no q/k/v biases")
    t.require("qk_norm_type", ("qwen3",), "only per-head (Qwen3) QK-norm is implemented")
    t.require("use_qk_norm", (True,), "transformers' Molmo2 always applies QK-norm")
    t.require("norm_after", (False,), "the LLM blocks are pre-norm")
    t.require(
        "tie_word_embeddings",
        (False,),
        "transformers' Molmo2 never ties lm_head to the embeddings (they differ in size)",
    )
    t.no_dropout("attention_dropout", "embedding_dropout", "residual_dropout")
    out = {}
    for ours, hf_name, kind in (
        ("vocab_size", "vocab_size", int),
        ("additional_vocab_size", "additional_vocab_size", int),
        ("hidden_size", "hidden_size", int),
        ("intermediate_size", "intermediate_size", int),
        ("num_layers", "num_hidden_layers", int),
        ("num_heads", "num_attention_heads", int),
        ("num_kv_heads", "num_key_value_heads", int),
        ("head_dim", "head_dim", int),
        ("rms_norm_eps", "rms_norm_eps", float),
    ):
        out[ours] = _take(origin, f"llm.{ours}", t, hf_name, kind)
    if out["num_heads"] % out["num_kv_heads"]:
        raise CheckpointError(
            f"{t.where('num_attention_heads')}={out['num_heads']} is not a multiple "
            f"of {t.where('num_key_value_heads')}={out['num_kv_heads']}"
        )
    # RoPE: `rope_parameters` (5.23), else the legacy `rope_scaling` plus a flat `rope_theta`.
    key = "rope_parameters" if t.raw.get("rope_parameters") is not None else "rope_scaling"
    params = t.raw.get(key) or {}
    t.read.update(("rope_parameters", "rope_scaling", "rope_theta"))
    if not isinstance(params, dict):
        raise CheckpointError(f"text_config.{key}={params!r} must be a mapping")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise CheckpointError(
            f"text_config.{key}={params!r} is not supported: only the default "
            "(unscaled) RoPE is implemented"
        )
    theta = params.get("rope_theta", t.raw.get("rope_theta"))
    try:
        out["rope_theta"] = float(_DEFAULT_ROPE_THETA if theta is None else theta)
    except (TypeError, ValueError):
        raise CheckpointError(f"text_config rope_theta={theta!r} is not a number") from None
    out["qk_norm"], out["tie_word_embeddings"] = True, False
    return out


# --------------------------------------------------------------------------------------------------
def read_config_json(path: str | Path) -> dict:
    """The config.json of a Molmo2 checkpoint directory, as a dict."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise CheckpointError(
            f"{path} has no config.json; pass a Hugging Face Molmo2 checkpoint directory"
        )
    try:
        hf = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{file} must hold a JSON object")
    return hf


def _same(name: str, given: Any, value: Any, num_layers: int) -> bool:
    if isinstance(value, float):
        try:
            return float(given) == value
        except (TypeError, ValueError):
            return False
    if name == "feature_layers":  # the same blocks, however they are counted
        try:
            return tuple(x % num_layers for x in given) == tuple(x % num_layers for x in value)
        except TypeError:
            return False
    if isinstance(value, tuple):
        return isinstance(given, (list, tuple)) and tuple(given) == value
    return given == value


def conflicts(given: dict[str, dict[str, Any]], arch: Molmo2Architecture) -> list[str]:
    """'model.vit.num_layers=27 but the checkpoint has 25 (...)' for each contradicted value."""
    out = []
    num_layers = arch.sections["vit"]["num_layers"]
    for section, values in arch.sections.items():
        for name, value in values.items():
            if name in given.get(section, {}) and not _same(
                name, given[section][name], value, num_layers
            ):
                where = arch.origin.get(f"{section}.{name}", name)
                out.append(
                    f"model.{section}.{name}={given[section][name]!r} but the checkpoint "
                    f"has {value!r} ({where})"
                )
    return out


def model_config_from_checkpoint(hf: dict, base: ModelConfig, path: str | Path) -> ModelConfig:
    """`base` with the architecture of the checkpoint at `path` (STTS, data-side settings and
    image attention stay `base`'s). When `base.hf_checkpoint` is this checkpoint, a `base` shape
    that disagrees is a ConfigError naming both values."""
    try:
        arch = parse_molmo2_config(hf)
    except CheckpointError as e:
        raise CheckpointError(f"{Path(path) / 'config.json'}: {e}") from None
    if base.hf_checkpoint and Path(base.hf_checkpoint).resolve() == Path(path).resolve():
        given = {
            s: {f.name: getattr(getattr(base, s), f.name) for f in fields(getattr(base, s))}
            for s in arch.sections
        }
        found = conflicts(given, arch)
        if found:
            raise ConfigError(
                f"model.hf_checkpoint={path} defines the architecture, but the model "
                f"config disagrees: {'; '.join(found)}"
            )
    s = arch.sections
    return replace(
        base,
        vit=replace(base.vit, **s["vit"]),
        connector=replace(base.connector, **s["connector"]),
        llm=replace(base.llm, **s["llm"]),
        tokens=replace(base.tokens, **s["tokens"]),
    )


def apply_checkpoint_architecture(data: dict[str, Any], source: str) -> dict[str, Any]:
    """A raw job-config mapping with the architecture of `model.hf_checkpoint` filled in.

    Keys the config does not set come from the checkpoint (image attention included); keys it
    sets must agree (a ConfigError names both values). Without `model.hf_checkpoint`, `data` is
    returned as it is.
    """
    model = data.get("model")
    if not isinstance(model, dict) or not model.get("hf_checkpoint"):
        return data
    path = str(model["hf_checkpoint"])
    if not (Path(path) / "config.json").is_file():
        # Not here (e.g. exporting a run elsewhere): a saved run config already holds the shape,
        # and loading the weights reports the missing directory.
        log.debug("model.hf_checkpoint=%s has no config.json; shape left to the config", path)
        return data
    try:
        arch = parse_molmo2_config(read_config_json(path))
    except CheckpointError as e:
        raise CheckpointError(f"model.hf_checkpoint={path}: {e}") from None
    given = {s: model.get(s) or {} for s in arch.sections}
    if not all(isinstance(v, dict) for v in given.values()):
        return data  # a malformed section: from_dict reports it with its dotted key
    found = conflicts(given, arch)
    if found:
        raise ConfigError(
            f"{source}: model.hf_checkpoint={path} defines the architecture, and the config "
            f"disagrees: {'; '.join(found)}. Drop these keys (they come from the checkpoint) or "
            "point model.hf_checkpoint at a checkpoint of that shape"
        )
    merged = dict(model)
    for section, values in arch.sections.items():
        merged[section] = {
            **given[section],
            **{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()},
        }
    merged["llm"].setdefault("image_attention", arch.image_attention)
    return {**data, "model": merged}
