"""Qwen3-style decoder (Molmo2's language model) over packed variable-length sequences.

Shape legend (AGENTS.md#shape-legend): S packed tokens, E LLM width, H query heads, Hkv
key/value heads, D head dim (`x_SHD`, `cos_SD`), X loss tokens (`hidden_XE`; in `freqs_SX`, half
the head dim).
Module names follow Hugging Face Molmo2's text model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stts_train.config.model import ModelConfig
from stts_train.models.common.attention import packed_attention
from stts_train.models.common.layers import LayerFactory, RMSNorm, shard_size


def rope_cos_sin(positions_S: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos/sin tables (S, Dh) for 1-D RoPE, computed in fp32."""
    inv_freq = 1.0 / (
        theta
        ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions_S.device) / head_dim)
    )
    freqs_SX = positions_S.float()[:, None] * inv_freq[None, :]
    emb_SD = torch.cat([freqs_SX, freqs_SX], dim=-1)
    return emb_SD.cos().to(dtype), emb_SD.sin().to(dtype)


def apply_rope(x_SHD: torch.Tensor, cos_SD: torch.Tensor, sin_SD: torch.Tensor) -> torch.Tensor:
    half = x_SHD.shape[-1] // 2
    rotated = torch.cat([-x_SHD[..., half:], x_SHD[..., :half]], dim=-1)
    return x_SHD * cos_SD[:, None, :] + rotated * sin_SD[:, None, :]


class LlmAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, factory: LayerFactory) -> None:
        super().__init__()
        m = cfg.llm
        self.local_heads = shard_size(m.num_heads, factory.tp_size, "model.llm.num_heads")
        self.local_kv_heads = shard_size(m.num_kv_heads, factory.tp_size, "model.llm.num_kv_heads")
        self.head_dim = m.head_dim
        self.q_proj = factory.column(m.hidden_size, m.num_heads * m.head_dim, bias=False)
        self.k_proj = factory.column(m.hidden_size, m.num_kv_heads * m.head_dim, bias=False)
        self.v_proj = factory.column(m.hidden_size, m.num_kv_heads * m.head_dim, bias=False)
        self.o_proj = factory.row(m.num_heads * m.head_dim, m.hidden_size, bias=False)
        self.q_norm = RMSNorm(m.head_dim, m.rms_norm_eps) if m.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(m.head_dim, m.rms_norm_eps) if m.qk_norm else nn.Identity()
        self.backend = cfg.attention_backend

    def forward(self, x_SE, cos_SD, sin_SD, cu_seqlens, lengths, bidirectional_S):
        num_tokens = x_SE.shape[0]
        q = self.q_norm(self.q_proj(x_SE).view(num_tokens, self.local_heads, self.head_dim))
        k = self.k_norm(self.k_proj(x_SE).view(num_tokens, self.local_kv_heads, self.head_dim))
        v = self.v_proj(x_SE).view(num_tokens, self.local_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos_SD, sin_SD), apply_rope(k, cos_SD, sin_SD)
        out_SHD = packed_attention(
            q,
            k,
            v,
            cu_seqlens,
            causal=True,
            bidirectional_S=bidirectional_S,
            backend=self.backend,
            lengths=lengths,
        )
        return self.o_proj(out_SHD.reshape(num_tokens, -1))


class LlmMLP(nn.Module):
    def __init__(self, hidden: int, inner: int, factory: LayerFactory) -> None:
        super().__init__()
        self.gate_proj = factory.column(hidden, inner, bias=False)
        self.up_proj = factory.column(hidden, inner, bias=False)
        self.down_proj = factory.row(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlmBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, factory: LayerFactory) -> None:
        super().__init__()
        m = cfg.llm
        self.input_layernorm = RMSNorm(m.hidden_size, m.rms_norm_eps)
        self.self_attn = LlmAttention(cfg, factory)
        self.post_attention_layernorm = RMSNorm(m.hidden_size, m.rms_norm_eps)
        self.mlp = LlmMLP(m.hidden_size, m.intermediate_size, factory)

    def forward(self, x_SE, cos_SD, sin_SD, cu_seqlens, lengths, bidirectional_S):
        x_SE = x_SE + self.self_attn(
            self.input_layernorm(x_SE), cos_SD, sin_SD, cu_seqlens, lengths, bidirectional_S
        )
        return x_SE + self.mlp(self.post_attention_layernorm(x_SE))


class LanguageModel(nn.Module):
    def __init__(self, cfg: ModelConfig, factory: LayerFactory) -> None:
        super().__init__()
        m = cfg.llm
        self.cfg = cfg
        self.embed_tokens = factory.vocab_embedding(m.total_vocab_size, m.hidden_size)
        self.layers = nn.ModuleList(LlmBlock(cfg, factory) for _ in range(m.num_layers))
        self.norm = RMSNorm(m.hidden_size, m.rms_norm_eps)
        self.lm_head = (
            None if m.tie_word_embeddings else factory.vocab_head(m.hidden_size, m.vocab_size)
        )
        if m.tie_word_embeddings and factory.tp_size > 1:
            raise ValueError(
                "model.llm.tie_word_embeddings=true is not supported with tensor parallelism; set "
                "it false"
            )

    def hidden_states(
        self, embeds_SE, positions_S, cu_seqlens, lengths, bidirectional_S=None
    ) -> torch.Tensor:
        m = self.cfg.llm
        cos_SD, sin_SD = rope_cos_sin(positions_S, m.head_dim, m.rope_theta, embeds_SE.dtype)
        x_SE = embeds_SE
        for block in self.layers:
            x_SE = block(x_SE, cos_SD, sin_SD, cu_seqlens, lengths, bidirectional_S)
        return self.norm(x_SE)

    def logits(self, hidden_XE: torch.Tensor) -> torch.Tensor:
        """Logits (vocabulary-sharded under tensor parallelism) over the base vocabulary."""
        if self.lm_head is not None:
            return self.lm_head(hidden_XE)
        return F.linear(hidden_XE, self.embed_tokens.weight[: self.cfg.llm.vocab_size])
