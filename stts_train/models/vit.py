"""SigLIP-style ViT with STTS pruning inside (Molmo2's vision tower).

Shape legend (AGENTS.md#shape-legend): F frames (flat), N patches per frame, C patch values,
D ViT width (the head dim Dh right after H), H heads, G groups per frame, P patches per group,
K kept patches (all frames), S tokens in a block call.

Forward with STTS (docs/stts.md#vit-pruning): blocks 0..prune_at on every patch of every frame; the
scorer reads block prune_at's output; block prune_at+1 runs on every patch with the soft key
bias; pruned patches are then dropped and blocks prune_at+2.. run on the kept patches only, one
varlen sequence per frame (no refill). Module names follow Hugging Face Molmo2 so weights map
one to one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from stts_train.config.model import ModelConfig
from stts_train.models.common.attention import cu_seqlens_from_lengths, packed_attention
from stts_train.models.common.layers import LayerFactory, gelu_tanh, shard_size
from stts_train.models.stts_scorer import TemporalTokenScorer
from stts_train.pruning.stts import (
    FrameLayout,
    group_index,
    group_to_patch,
    select_groups,
    soft_bias,
    temporal_aux_loss,
)


class VisionAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int, factory: LayerFactory) -> None:
        super().__init__()
        self.local_heads = shard_size(num_heads, factory.tp_size, "model.vit.num_heads")
        self.head_dim = head_dim
        self.q_proj = factory.column(dim, num_heads * head_dim, bias=True)
        self.k_proj = factory.column(dim, num_heads * head_dim, bias=True)
        self.v_proj = factory.column(dim, num_heads * head_dim, bias=True)
        self.o_proj = factory.row(num_heads * head_dim, dim, bias=True)

    def forward(self, x_SD, cu_seqlens, lengths, key_bias_S=None, backend="auto") -> torch.Tensor:
        shape = (x_SD.shape[0], self.local_heads, self.head_dim)
        q, k, v = (
            self.q_proj(x_SD).view(shape),
            self.k_proj(x_SD).view(shape),
            self.v_proj(x_SD).view(shape),
        )
        out_SHD = packed_attention(
            q,
            k,
            v,
            cu_seqlens,
            causal=False,
            key_bias_S=key_bias_S,
            backend=backend,
            lengths=lengths,
        )
        return self.o_proj(out_SHD.reshape(x_SD.shape[0], -1))


class VisionMLP(nn.Module):
    def __init__(self, dim: int, hidden: int, factory: LayerFactory) -> None:
        super().__init__()
        self.fc1 = factory.column(dim, hidden, bias=True)
        self.fc2 = factory.row(hidden, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(gelu_tanh(self.fc1(x)))


class VisionBlock(nn.Module):
    """Pre-LN block: x + Attn(LN1(x)); x + MLP(LN2(x))."""

    def __init__(self, cfg: ModelConfig, factory: LayerFactory) -> None:
        super().__init__()
        v = cfg.vit
        self.layer_norm1 = nn.LayerNorm(v.hidden_size, eps=v.layer_norm_eps)
        self.self_attn = VisionAttention(v.hidden_size, v.num_heads, v.head_dim, factory)
        self.layer_norm2 = nn.LayerNorm(v.hidden_size, eps=v.layer_norm_eps)
        self.mlp = VisionMLP(v.hidden_size, v.intermediate_size, factory)
        self.backend = cfg.attention_backend

    def forward(self, x_SD, cu_seqlens, lengths, key_bias_S=None) -> torch.Tensor:
        x_SD = x_SD + self.self_attn(
            self.layer_norm1(x_SD), cu_seqlens, lengths, key_bias_S, self.backend
        )
        return x_SD + self.mlp(self.layer_norm2(x_SD))


@dataclass
class VisionOutput:
    features_KD: torch.Tensor
    """Concatenated feature layers at kept patches, frame-major, raster order: (K, D * layers)."""
    keep_group_FG: torch.Tensor
    keep_patch_FN: torch.Tensor
    scores_FG: torch.Tensor | None
    aux_loss: torch.Tensor
    block_tokens: list[int] = field(default_factory=list)
    """Tokens that entered each block (the 'pruned tokens are never computed' check)."""
    debug: dict[str, torch.Tensor] = field(default_factory=dict)
    """With `return_debug`: bias_FG, hidden_bias_block_FND, hidden_last_KD (kept patches)."""


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig, factory: LayerFactory) -> None:
        super().__init__()
        v = cfg.vit
        self.cfg = cfg
        self.patch_embedding = nn.Linear(v.patch_dim, v.hidden_size)
        self.positional_embedding = nn.Parameter(torch.zeros(v.num_patches, v.hidden_size))
        self.layers = nn.ModuleList(VisionBlock(cfg, factory) for _ in range(v.num_layers))
        self.feature_layers = v.resolved_feature_layers
        self.use_stts = cfg.stts.pruner == "stts"
        if self.use_stts:
            self.scorer = TemporalTokenScorer(
                v.hidden_size,
                v.num_heads,
                v.head_dim,
                cfg.stts.scorer_hidden_size or v.intermediate_size,
                factory,
            )
        self.register_buffer(
            "group_index_GP", group_index(v.grid_size, cfg.connector.pool_size), persistent=False
        )

    def forward(self, pixels_FNC: torch.Tensor, layout: FrameLayout) -> VisionOutput:
        x_FND = self.patch_embedding(pixels_FNC) + self.positional_embedding.to(pixels_FNC.dtype)
        return self.forward_embedded(x_FND, layout)

    def forward_embedded(
        self,
        x_FND: torch.Tensor,
        layout: FrameLayout,
        *,
        frame_valid_F: torch.Tensor | None = None,
        return_debug: bool = False,
    ) -> VisionOutput:
        """Blocks from the embedded patches on. `frame_valid_F` marks padding frames (False),
        which are dropped after block prune_at+1 (the golden vectors' batch layout has them)."""
        cfg = self.cfg
        num_frames, num_patches, _ = x_FND.shape
        debug: dict[str, torch.Tensor] = {}
        dense_lengths = [num_patches] * num_frames
        dense_cu = cu_seqlens_from_lengths(
            torch.full((num_frames,), num_patches, device=x_FND.device)
        )
        x_SD = x_FND.reshape(num_frames * num_patches, -1)
        saved: dict[int, torch.Tensor] = {}
        block_tokens: list[int] = []
        prune_at = cfg.stts.prune_at if self.use_stts else len(self.layers)
        num_groups = self.group_index_GP.shape[0]
        keep_group_FG = torch.ones(num_frames, num_groups, dtype=torch.bool, device=x_SD.device)
        scores_FG = None
        aux_loss = x_SD.new_zeros(())

        # Blocks 0..prune_at (and, without STTS, every block): all patches, one sequence per frame.
        for i in range(min(prune_at + 1, len(self.layers))):
            block_tokens.append(x_SD.shape[0])
            x_SD = self.layers[i](x_SD, dense_cu, dense_lengths)
            saved[i] = x_SD
        if not self.use_stts:
            keep_patch_FN = torch.ones(
                num_frames, num_patches, dtype=torch.bool, device=x_SD.device
            )
            return self._output(
                saved, keep_group_FG, keep_patch_FN, scores_FG, aux_loss, block_tokens
            )

        # The scorer runs on every frame in every step (ZeRO needs every rank to use it).
        hidden_FND = x_SD.view(num_frames, num_patches, -1)
        scores_FG = self.scorer(hidden_FND, self.group_index_GP, layout.first_frame_F)
        if layout.video_spans:
            keep_group_FG = select_groups(scores_FG, layout)
            bias_FG = soft_bias(
                scores_FG,
                layout,
                groups_per_side=int(round(num_groups**0.5)),
                axis=cfg.stts.rescale_axis,
                min_value=cfg.stts.rescale_bias_min,
            )
            key_bias_S = group_to_patch(bias_FG, self.group_index_GP, num_patches).reshape(-1)
            if self.training and cfg.stts.aux_loss_weight > 0:
                aux_loss = temporal_aux_loss(
                    hidden_FND,
                    scores_FG,
                    layout,
                    self.group_index_GP,
                    coefficient=1.0,
                    detach_target=cfg.stts.detach_aux_target,
                )
        else:
            key_bias_S = None
            bias_FG = scores_FG.new_zeros(scores_FG.shape)
            aux_loss = aux_loss + 0.0 * scores_FG.sum()  # keep the scorer in the graph
        if frame_valid_F is not None:
            keep_group_FG = keep_group_FG & frame_valid_F[:, None]
        keep_patch_FN = group_to_patch(keep_group_FG, self.group_index_GP, num_patches)

        # Block prune_at+1: every patch, soft bias on keys (the only path from CE to the scorer).
        biased = prune_at + 1
        if biased < len(self.layers):
            block_tokens.append(x_SD.shape[0])
            x_SD = self.layers[biased](x_SD, dense_cu, dense_lengths, key_bias_S)
            saved[biased] = x_SD
        if return_debug:
            debug = {
                "bias_FG": bias_FG,
                "hidden_bias_block_FND": x_SD.view(num_frames, num_patches, -1),
            }

        # Blocks prune_at+2..: kept patches only, one varlen sequence per frame.
        keep_patch_S = keep_patch_FN.reshape(-1)
        kept_lengths_F = keep_patch_FN.sum(dim=1)
        kept_lengths = kept_lengths_F.tolist()
        kept_cu = cu_seqlens_from_lengths(kept_lengths_F)
        kept_SD = x_SD[keep_patch_S]
        for i in range(biased + 1, len(self.layers)):
            block_tokens.append(kept_SD.shape[0])
            kept_SD = self.layers[i](kept_SD, kept_cu, kept_lengths)
            saved[i] = kept_SD
        if return_debug:
            debug["hidden_last_KD"] = kept_SD
        out = self._output(saved, keep_group_FG, keep_patch_FN, scores_FG, aux_loss, block_tokens)
        out.debug = debug
        return out

    def _output(self, saved, keep_group_FG, keep_patch_FN, scores_FG, aux_loss, block_tokens):
        keep_patch_S = keep_patch_FN.reshape(-1)
        num_kept = int(keep_patch_S.sum())
        feats = []
        for layer in self.feature_layers:
            h = saved[layer]
            # Blocks up to prune_at+1 hold every patch; later blocks hold kept patches only.
            is_dense = h.shape[0] == keep_patch_S.numel()
            feats.append(h[keep_patch_S] if is_dense and num_kept != h.shape[0] else h)
        return VisionOutput(
            features_KD=torch.cat(feats, dim=-1),
            keep_group_FG=keep_group_FG,
            keep_patch_FN=keep_patch_FN,
            scores_FG=scores_FG,
            aux_loss=aux_loss,
            block_tokens=block_tokens,
        )
