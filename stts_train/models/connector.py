"""Molmo2 connector: concatenated ViT layers -> 3x3 attention pooling (mean query) -> SwiGLU.

Shape legend (AGENTS.md#shape-legend): K kept patches, X kept groups (= LLM image tokens),
P patches per group, H heads, D feature width (the concatenated feature layers; the head dim right
after H), E LLM width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stts_train.config.model import ModelConfig
from stts_train.models.common.layers import LayerFactory, shard_size


class GroupPoolingAttention(nn.Module):
    """Cross-attention from each group's mean (query) to its patches (keys/values)."""

    def __init__(
        self, in_dim: int, out_dim: int, num_heads: int, head_dim: int, factory: LayerFactory
    ) -> None:
        super().__init__()
        self.local_heads = shard_size(
            num_heads, factory.tp_size, "model.connector.pooling_num_heads"
        )
        self.head_dim = head_dim
        self.q_proj = factory.column(in_dim, num_heads * head_dim, bias=True)
        self.k_proj = factory.column(in_dim, num_heads * head_dim, bias=True)
        self.v_proj = factory.column(in_dim, num_heads * head_dim, bias=True)
        self.o_proj = factory.row(num_heads * head_dim, out_dim, bias=True)

    def forward(self, patches_XPD: torch.Tensor) -> torch.Tensor:
        x_count, num_patches, _ = patches_XPD.shape
        query_X1D = patches_XPD.mean(dim=1, keepdim=True)
        q = self.q_proj(query_X1D).view(x_count, 1, self.local_heads, self.head_dim).transpose(1, 2)
        k = (
            self.k_proj(patches_XPD)
            .view(x_count, num_patches, self.local_heads, self.head_dim)
            .transpose(1, 2)
        )
        v = (
            self.v_proj(patches_XPD)
            .view(x_count, num_patches, self.local_heads, self.head_dim)
            .transpose(1, 2)
        )
        out_XH1D = F.scaled_dot_product_attention(q, k, v)
        return self.o_proj(out_XH1D.reshape(x_count, self.local_heads * self.head_dim))


class Projector(nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int, factory: LayerFactory) -> None:
        super().__init__()
        self.gate_proj = factory.column(in_dim, hidden, bias=False)
        self.up_proj = factory.column(in_dim, hidden, bias=False)
        self.down_proj = factory.row(hidden, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Connector(nn.Module):
    def __init__(self, cfg: ModelConfig, factory: LayerFactory) -> None:
        super().__init__()
        v, c = cfg.vit, cfg.connector
        in_dim = v.hidden_size * len(v.feature_layers)
        self.image_pooling_2d = GroupPoolingAttention(
            in_dim, v.hidden_size, c.pooling_num_heads, c.pooling_head_dim, factory
        )
        self.image_projector = Projector(
            v.hidden_size, c.intermediate_size, cfg.llm.hidden_size, factory
        )

    def forward(self, features_KD: torch.Tensor, group_patches_XP: torch.Tensor) -> torch.Tensor:
        """Pool each kept group (rows of `group_patches_XP` index `features_KD`) -> (X, E)."""
        patches_XPD = features_KD[group_patches_XP]
        return self.image_projector(self.image_pooling_2d(patches_XPD))
