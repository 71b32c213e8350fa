"""Hugging Face Molmo2 checkpoints <-> our model.

Hugging Face `Molmo2ForConditionalGeneration` (transformers 5.23) stores weights on disk in
Molmo2's original naming (`model.transformer.*`, `model.vision_backbone.*`, fused `att_proj` =
[q; k; v] and `ff_proj` = [up; gate]) and renames them at load time. We read and write that disk
format directly, so no transformers import is needed to load; `export_hf` uses transformers only
to write a complete `config.json`. The STTS scorer is not part of Molmo2: `export_hf` stores it in
the main weights under the reference names (`model.` + SCORER_PREFIX, as the released STTS
checkpoints do), which transformers and vLLM report as unused and ignore; `load_hf` restores it
from there (stts_train/checkpoint/hf_weights.py), or from the `stts_scorer.safetensors` that
older exports wrote beside the weights.

An export is what `save_pretrained` users expect: config.json, bf16 (or fp32) weight shards with
`model.safetensors.index.json`, generation_config.json, the tokenizer files and chat template
(stts_train/models/tokenizer.py::save_tokenizer), the processor configs and a README.md saying
which runtimes apply STTS pruning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from stts_train.checkpoint.hf_weights import read_state
from stts_train.config.hf_checkpoint import model_config_from_checkpoint
from stts_train.config.model import ModelConfig
from stts_train.errors import CheckpointError

VIT = "model.vision_backbone.image_vit."
SCORER_FILE = "stts_scorer.safetensors"
SCORER_PREFIX = "vision_backbone.image_vit.transformer.temporal_token_scorer."

_VIT_BLOCK = {
    "self_attn.q_proj": "attention.wq",
    "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo",
    "layer_norm1": "attention_norm",
    "layer_norm2": "ffn_norm",
    "mlp.fc1": "feed_forward.w1",
    "mlp.fc2": "feed_forward.w2",
}
_CONNECTOR = {
    "image_pooling_2d.q_proj": "image_pooling_2d.wq",
    "image_pooling_2d.k_proj": "image_pooling_2d.wk",
    "image_pooling_2d.v_proj": "image_pooling_2d.wv",
    "image_pooling_2d.o_proj": "image_pooling_2d.wo",
    "image_projector.gate_proj": "image_projector.w1",
    "image_projector.down_proj": "image_projector.w2",
    "image_projector.up_proj": "image_projector.w3",
}
_LLM_BLOCK = {
    "self_attn.o_proj": "self_attn.attn_out",
    "self_attn.q_norm": "self_attn.q_norm",
    "self_attn.k_norm": "self_attn.k_norm",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ff_norm",
    "mlp.down_proj": "mlp.ff_out",
}


# --------------------------------------------------------------------------------------------------
# config
def hf_config_dict(cfg: ModelConfig) -> dict:
    """The Molmo2 config as keyword arguments of `transformers.Molmo2Config`."""
    v, c, m, tok = cfg.vit, cfg.connector, cfg.llm, cfg.tokens
    return dict(
        vision_config=dict(
            hidden_size=v.hidden_size,
            intermediate_size=v.intermediate_size,
            num_hidden_layers=v.num_layers,
            num_attention_heads=v.num_heads,
            num_key_value_heads=v.num_heads,
            head_dim=v.head_dim,
            layer_norm_eps=v.layer_norm_eps,
            image_size=[v.image_size, v.image_size],
            patch_size=v.patch_size,
        ),
        adapter_config=dict(
            vision_feature_layer=list(v.feature_layers),
            hidden_size=v.hidden_size,
            num_attention_heads=c.pooling_num_heads,
            num_key_value_heads=c.pooling_num_heads,
            head_dim=c.pooling_head_dim,
            intermediate_size=c.intermediate_size,
            text_hidden_size=m.hidden_size,
        ),
        text_config=dict(
            hidden_size=m.hidden_size,
            num_attention_heads=m.num_heads,
            num_key_value_heads=m.num_kv_heads,
            head_dim=m.head_dim,
            vocab_size=m.vocab_size,
            additional_vocab_size=m.additional_vocab_size,
            num_hidden_layers=m.num_layers,
            intermediate_size=m.intermediate_size,
            rms_norm_eps=m.rms_norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": m.rope_theta},
            tie_word_embeddings=m.tie_word_embeddings,
        ),
        image_start_token_id=tok.image_start_id,
        image_end_token_id=tok.image_end_id,
        image_patch_id=tok.image_patch_id,
        low_res_image_start_token_id=tok.low_res_image_start_id,
        frame_start_token_id=tok.frame_start_id,
        frame_end_token_id=tok.frame_end_id,
        tie_word_embeddings=m.tie_word_embeddings,
        stts_image_attention=m.image_attention,
    )


# --------------------------------------------------------------------------------------------------
# weights
def to_hf_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> tuple[dict, dict]:
    """Our full state dict -> (Molmo2 disk-format tensors, scorer tensors under the reference
    names with the `model.` prefix of the other Molmo2 tensors)."""
    out: dict[str, torch.Tensor] = {}
    scorer: dict[str, torch.Tensor] = {}
    m = cfg.llm
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        if name.startswith("vision.scorer."):
            scorer["model." + SCORER_PREFIX + name[len("vision.scorer.") :]] = tensor
        elif name in (
            "vision.patch_embedding.weight",
            "vision.patch_embedding.bias",
            "vision.positional_embedding",
        ):
            out[VIT + name[len("vision.") :]] = tensor
        elif name.startswith("vision.layers."):
            i, rest = name[len("vision.layers.") :].split(".", 1)
            module, leaf = rest.rsplit(".", 1)
            out[f"{VIT}transformer.resblocks.{i}.{_VIT_BLOCK[module]}.{leaf}"] = tensor
        elif name.startswith("connector."):
            module, leaf = name[len("connector.") :].rsplit(".", 1)
            out[f"model.vision_backbone.{_CONNECTOR[module]}.{leaf}"] = tensor
        elif name == "llm.embed_tokens.weight":
            out["model.transformer.wte.embedding"] = tensor[: m.vocab_size].clone()
            out["model.transformer.wte.new_embedding"] = tensor[m.vocab_size :].clone()
        elif name == "llm.norm.weight":
            out["model.transformer.ln_f.weight"] = tensor
        elif name == "llm.lm_head.weight":
            out["lm_head.weight"] = tensor
        elif name.startswith("llm.layers."):
            i, rest = name[len("llm.layers.") :].split(".", 1)
            module, leaf = rest.rsplit(".", 1)
            if module in _LLM_BLOCK:
                out[f"model.transformer.blocks.{i}.{_LLM_BLOCK[module]}.{leaf}"] = tensor
        else:
            raise CheckpointError(f"no Molmo2 name for parameter {name!r}")
    for i in range(m.num_layers):
        p = f"llm.layers.{i}."
        out[f"model.transformer.blocks.{i}.self_attn.att_proj.weight"] = torch.cat(
            [state[p + f"self_attn.{x}_proj.weight"].detach().cpu() for x in "qkv"], dim=0
        )
        out[f"model.transformer.blocks.{i}.mlp.ff_proj.weight"] = torch.cat(
            [
                state[p + "mlp.up_proj.weight"].detach().cpu(),
                state[p + "mlp.gate_proj.weight"].detach().cpu(),
            ],
            dim=0,
        )
    return out, scorer


def from_hf_state_dict(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Molmo2 disk-format tensors -> our state dict names (scorer excluded)."""
    inverse_vit = {v: k for k, v in _VIT_BLOCK.items()}
    inverse_conn = {v: k for k, v in _CONNECTOR.items()}
    inverse_llm = {v: k for k, v in _LLM_BLOCK.items()}
    m = cfg.llm
    q_rows, kv_rows = m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for name, tensor in hf.items():
        if name.startswith(VIT + "transformer.resblocks."):
            i, rest = name[len(VIT + "transformer.resblocks.") :].split(".", 1)
            module, leaf = rest.rsplit(".", 1)
            if int(i) >= cfg.vit.num_layers:
                continue  # layers past the deepest feature layer are not instantiated (as in HF)
            out[f"vision.layers.{i}.{inverse_vit[module]}.{leaf}"] = tensor
        elif name.startswith(VIT):
            out["vision." + name[len(VIT) :]] = tensor
        elif name.startswith("model.vision_backbone."):
            module, leaf = name[len("model.vision_backbone.") :].rsplit(".", 1)
            out[f"connector.{inverse_conn[module]}.{leaf}"] = tensor
        elif name.startswith("model.transformer.blocks."):
            i, rest = name[len("model.transformer.blocks.") :].split(".", 1)
            module, leaf = rest.rsplit(".", 1)
            p = f"llm.layers.{i}."
            if module == "self_attn.att_proj":
                q, k, v = torch.split(tensor, [q_rows, kv_rows, kv_rows], dim=0)
                out[p + "self_attn.q_proj.weight"], out[p + "self_attn.k_proj.weight"] = q, k
                out[p + "self_attn.v_proj.weight"] = v
            elif module == "mlp.ff_proj":
                up, gate = torch.chunk(tensor, 2, dim=0)
                out[p + "mlp.up_proj.weight"], out[p + "mlp.gate_proj.weight"] = up, gate
            elif module in inverse_llm:
                out[f"{p}{inverse_llm[module]}.{leaf}"] = tensor
            else:
                unknown.append(name)
        elif name == "model.transformer.ln_f.weight":
            out["llm.norm.weight"] = tensor
        elif name == "lm_head.weight":
            out["llm.lm_head.weight"] = tensor
        elif name in ("model.transformer.wte.embedding", "model.transformer.wte.new_embedding"):
            continue
        else:
            unknown.append(name)
    if unknown:
        raise CheckpointError(
            f"unrecognised Molmo2 weights: {unknown[:8]}{' ...' if len(unknown) > 8 else ''}"
        )
    if "model.transformer.wte.embedding" not in hf:
        raise CheckpointError(
            "checkpoint has no model.transformer.wte.embedding; is it a Molmo2 checkpoint?"
        )
    parts = [hf["model.transformer.wte.embedding"]]
    if "model.transformer.wte.new_embedding" in hf:
        parts.append(hf["model.transformer.wte.new_embedding"])
    out["llm.embed_tokens.weight"] = torch.cat(parts, dim=0)
    return out


def load_hf(
    path: str | Path, base: ModelConfig | None = None
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read a local Molmo2 directory: (ModelConfig with `base`'s STTS settings, our state dict).

    The state dict includes the scorer only if the directory has `stts_scorer.safetensors`; a model
    loaded without it keeps its freshly initialised scorer (as the reference does).
    """
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(
            f"{path} has no config.json; pass a Hugging Face Molmo2 checkpoint directory"
        )
    hf_cfg = json.loads(config_file.read_text())
    if hf_cfg.get("model_type") != "molmo2":
        raise CheckpointError(
            f"{config_file}: model_type={hf_cfg.get('model_type')!r}, expected 'molmo2'"
        )
    cfg = model_config_from_checkpoint(hf_cfg, base or ModelConfig(), path)
    state = read_state(path, cfg, from_hf_state_dict)
    scorer_file = path / SCORER_FILE
    if scorer_file.is_file():
        from safetensors.torch import load_file

        for name, tensor in load_file(str(scorer_file)).items():
            state["vision.scorer." + name[len(SCORER_PREFIX) :]] = tensor
    return cfg, state


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a (possibly scorer-less) state dict; anything else missing or extra is an error."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("vision.scorer.")]
    if missing or unexpected:
        raise CheckpointError(
            f"weights do not fit the model: missing {missing[:6]}, unexpected {unexpected[:6]}"
        )


DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
MAX_SHARD_BYTES = 5 * 10**9  # what save_pretrained uses by default ("5GB")


def export_hf(
    state: dict[str, torch.Tensor],
    cfg: ModelConfig,
    out_dir: str | Path,
    *,
    dtype: str = "bf16",
    max_shard_bytes: int = MAX_SHARD_BYTES,
    data: Any = None,
    progress: bool = False,
) -> Path:
    """Write a servable Hugging Face Molmo2 directory (see the module docstring).

    `dtype`: "bf16" (default) or "fp32"; `max_shard_bytes`: the largest weight shard (a tensor
    bigger than that gets a shard of its own); `data`: the run's DataConfig, whose frame limits go
    into the video processor config (its defaults when None); `progress`: a tqdm bar while the
    shards are written.
    """
    if dtype not in DTYPES:
        raise CheckpointError(f"export dtype={dtype!r}; use one of {sorted(DTYPES)}")
    if max_shard_bytes < 1:
        raise CheckpointError(f"max shard size {max_shard_bytes} bytes must be positive")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_state, scorer = to_hf_state_dict(state, cfg)
    hf_state.update(scorer)
    write_config(cfg, out_dir, dtype)
    write_shards(hf_state, out_dir, DTYPES[dtype], max_shard_bytes, progress)
    write_generation_config(cfg, out_dir)
    from stts_train.models.tokenizer import save_tokenizer

    save_tokenizer(cfg, out_dir)
    write_processor_configs(cfg, out_dir, data)
    (out_dir / "README.md").write_text(export_readme(cfg, dtype, has_scorer=bool(scorer)))
    return out_dir


def write_config(cfg: ModelConfig, out_dir: Path, dtype: str) -> None:
    torch_dtype = "bfloat16" if dtype == "bf16" else "float32"
    try:
        from transformers import Molmo2Config  # complete config with every default filled in
    except ImportError:
        config = {
            "model_type": "molmo2",
            "architectures": ["Molmo2ForConditionalGeneration"],
            "dtype": torch_dtype,
            **hf_config_dict(cfg),
        }
        (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    else:
        hf_config = Molmo2Config(**hf_config_dict(cfg))
        hf_config.architectures = ["Molmo2ForConditionalGeneration"]
        hf_config.dtype = torch_dtype
        hf_config.to_json_file(str(out_dir / "config.json"))


def write_shards(
    hf_state: dict[str, torch.Tensor],
    out_dir: Path,
    dtype: torch.dtype,
    max_shard_bytes: int,
    progress: bool = False,
) -> list[str]:
    """Tensors (floats cast to `dtype`) -> model-0000i-of-0000n.safetensors shards of at most
    `max_shard_bytes` each, plus model.safetensors.index.json; returns the shard names."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    shards: list[list[str]] = [[]]
    size = 0
    nbytes = {
        k: v.numel() * (dtype.itemsize if v.is_floating_point() else v.element_size())
        for k, v in hf_state.items()
    }
    for name in sorted(hf_state):
        if shards[-1] and size + nbytes[name] > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes[name]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for old in out_dir.glob("model*.safetensors"):
        old.unlink()  # a previous export's shards would be listed by nobody
    weight_map = {}
    bar = tqdm(
        total=sum(nbytes.values()),
        unit="B",
        unit_scale=True,
        desc=f"writing {len(names)} shard{'s' if len(names) > 1 else ''}",
        disable=not progress,
    )
    with bar:
        for file, keys in zip(names, shards):
            part = {}
            for k in keys:
                t = hf_state[k]
                part[k] = (t.to(dtype) if t.is_floating_point() else t).contiguous()
                weight_map[k] = file
            save_file(part, str(out_dir / file), metadata={"format": "pt"})
            bar.update(sum(nbytes[k] for k in keys))
    index = {"metadata": {"total_size": sum(nbytes.values())}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return names


def write_generation_config(cfg: ModelConfig, out_dir: Path) -> None:
    """Greedy decoding that stops at the chat turn's end (<|im_end|> = model.tokens.eos_id)."""
    config = {
        "eos_token_id": cfg.tokens.eos_id,
        "pad_token_id": cfg.tokens.pad_id,
        "do_sample": False,
    }
    (out_dir / "generation_config.json").write_text(json.dumps(config, indent=2))


def write_processor_configs(cfg: ModelConfig, out_dir: Path, data: Any = None) -> None:
    """preprocessor_config.json (images), video_preprocessor_config.json and processor_config.json
    in the keys transformers' Molmo2 processors read, for our frame geometry and prompt layout
    (frames wrapped in <frame_start>/<frame_end>, no column tokens; stts_train/data/template.py)."""
    from stts_train.config.data import DataConfig

    data = data or DataConfig()
    v, pool = cfg.vit, cfg.connector.pool_size
    common = {
        "processor_class": "Molmo2Processor",
        "size": {"height": v.image_size, "width": v.image_size},
        "patch_size": v.patch_size,
        "pooling_size": [pool, pool],
        "image_mean": list(v.image_mean),
        "image_std": list(v.image_std),
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
        "resample": 2,  # bilinear
    }
    image = {"image_processor_type": "Molmo2ImageProcessor", **common}
    video = {
        "video_processor_type": "Molmo2VideoProcessor",
        **common,
        "num_frames": data.max_frames,
        "max_fps": data.max_fps,
        "do_sample_frames": True,
    }
    processor = {
        "processor_class": "Molmo2Processor",
        "image_use_col_tokens": True,
        "use_single_crop_col_tokens": None,
        "use_single_crop_start_token": True,
        "video_use_col_tokens": False,
        "use_frame_special_tokens": True,
    }
    for name, config in (
        ("preprocessor_config.json", image),
        ("video_preprocessor_config.json", video),
        ("processor_config.json", processor),
    ):
        (out_dir / name).write_text(json.dumps(config, indent=2))


def export_readme(cfg: ModelConfig, dtype: str, has_scorer: bool) -> str:
    s = cfg.stts
    scorer = (
        f"The weights include the trained STTS scorer (`model.{SCORER_PREFIX}*`; pruner "
        f"`{s.pruner}`, keep ratio {s.keep_ratio}, after ViT block {s.prune_at})."
        if has_scorer
        else f"This model has no learned STTS scorer (trained with pruner `{s.pruner}`)."
    )
    return f"""# Molmo2 checkpoint exported by stts-train

{scorer}

| runtime | STTS token pruning |
|---|---|
| `stts-train eval` (this repository) | applied: video tokens are pruned as in training |
| transformers `Molmo2ForConditionalGeneration` | not applied: the model runs unpruned; the \
scorer tensors are reported as unused weights and ignored |
| vLLM (Molmo2) | not applied: the model runs unpruned; the scorer tensors are ignored |

Weights: {dtype}, sharded (`model.safetensors.index.json`). Tokenizer, chat template and the
Molmo2 processor configs are included, so

```python
from transformers import AutoProcessor, AutoTokenizer, Molmo2ForConditionalGeneration
model = Molmo2ForConditionalGeneration.from_pretrained(PATH)
tokenizer = AutoTokenizer.from_pretrained(PATH)
processor = AutoProcessor.from_pretrained(PATH)  # needs torchvision
```

loads it; `vllm serve PATH` serves it (unpruned).
"""
