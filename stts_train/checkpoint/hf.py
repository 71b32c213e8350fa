"""Hugging Face Molmo2 checkpoints <-> our model.

Hugging Face `Molmo2ForConditionalGeneration` (transformers 5.23) stores weights on disk in
Molmo2's original naming (`model.transformer.*`, `model.vision_backbone.*`, fused `att_proj` =
[q; k; v] and `ff_proj` = [up; gate]) and renames them at load time. We read and write that disk
format directly, so no transformers import is needed to load; `export_hf` uses transformers only
to write a complete `config.json`. The STTS scorer is not part of Molmo2: it is saved beside the
checkpoint as `stts_scorer.safetensors` (reference key names) and restored by `load_hf`.
"""

from __future__ import annotations

import json
from pathlib import Path

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
    """Our full state dict -> (Molmo2 disk-format tensors, scorer tensors with reference names)."""
    out: dict[str, torch.Tensor] = {}
    scorer: dict[str, torch.Tensor] = {}
    m = cfg.llm
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        if name.startswith("vision.scorer."):
            scorer[SCORER_PREFIX + name[len("vision.scorer.") :]] = tensor
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


def export_hf(state: dict[str, torch.Tensor], cfg: ModelConfig, out_dir: str | Path) -> Path:
    """Write a Hugging Face Molmo2 directory (config.json + model.safetensors [+ scorer])."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_state, scorer = to_hf_state_dict(state, cfg)
    try:
        from transformers import Molmo2Config  # complete config with every default filled in
    except ImportError:
        config = {
            "model_type": "molmo2",
            "architectures": ["Molmo2ForConditionalGeneration"],
            **hf_config_dict(cfg),
        }
        (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    else:
        hf_config = Molmo2Config(**hf_config_dict(cfg))
        hf_config.architectures = ["Molmo2ForConditionalGeneration"]
        hf_config.to_json_file(str(out_dir / "config.json"))
    save_file(hf_state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    if scorer:
        save_file(scorer, str(out_dir / SCORER_FILE), metadata={"format": "pt"})
    return out_dir
