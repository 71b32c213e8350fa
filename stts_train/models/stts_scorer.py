"""The STTS scorer: a learned score in (0, 1) for every group of every frame.

Shape legend: F frames (flat, item after item), N patches per frame, D ViT width, G groups per
frame (pool x pool windows of patches), P patches per group, X = F * G groups, H heads.

Mean-query attention pooling per group, [previous, current] pairing of each group with the same
group of the previous frame, a 3-layer SiLU MLP and a sigmoid. The selection, soft bias and
auxiliary loss built on these scores are tensor functions in `stts_train/pruning/stts.py`; the
scorer lives here, with the model, because it is built through the layer factory (pruning never
imports models).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stts_train.models.common.layers import LayerFactory, LocalLayerFactory, trunc_normal_fan_in_


class PoolingAttention(nn.Module):
    """One query (the mean of the group) attending over the group's patches; fp32 softmax."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, factory: LayerFactory) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.wq = factory.replicated(dim, num_heads * head_dim, bias=True)
        self.wk = factory.replicated(dim, num_heads * head_dim, bias=True)
        self.wv = factory.replicated(dim, num_heads * head_dim, bias=True)
        self.wo = factory.replicated(num_heads * head_dim, dim, bias=True)

    def forward(self, patches_XPD: torch.Tensor) -> torch.Tensor:
        x_count, num_patches, _ = patches_XPD.shape
        query_X1D = patches_XPD.mean(dim=1, keepdim=True)
        q = self.wq(query_X1D).view(x_count, 1, self.num_heads, self.head_dim)
        k = self.wk(patches_XPD).view(x_count, num_patches, self.num_heads, self.head_dim)
        v = self.wv(patches_XPD).view(x_count, num_patches, self.num_heads, self.head_dim)
        logits_XHP = torch.einsum("xqhd,xkhd->xhk", q.float(), k.float()) / math.sqrt(self.head_dim)
        attn_XHP = logits_XHP.softmax(dim=-1)
        out_XHD = torch.einsum("xhk,xkhd->xhd", attn_XHP, v.float()).to(patches_XPD.dtype)
        return self.wo(out_XHD.reshape(x_count, self.num_heads * self.head_dim))


class ScorerMLP(nn.Module):
    def __init__(self, in_dim: int, hidden: int, factory: LayerFactory) -> None:
        super().__init__()
        self.w1 = factory.replicated(in_dim, hidden, bias=True)
        self.w2 = factory.replicated(hidden, hidden, bias=True)
        self.w3 = factory.replicated(hidden, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w2(F.silu(self.w1(x)))))


class TemporalTokenScorer(nn.Module):
    """Scores every group of every frame from the block-`prune_at` hidden states (no LayerNorm).

    The scorer is replicated on every tensor-parallel rank, so selection is identical everywhere.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int,
        mlp_hidden: int,
        factory: LayerFactory | None = None,
    ) -> None:
        super().__init__()
        factory = factory or LocalLayerFactory()
        self.patch_token_pooler = PoolingAttention(dim, num_heads, head_dim, factory)
        self.mlp = ScorerMLP(2 * dim, mlp_hidden, factory)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for lin in (self.mlp.w1, self.mlp.w2, self.mlp.w3):
            trunc_normal_fan_in_(lin.weight)
            lin.bias.zero_()
        pooler = self.patch_token_pooler
        for lin in (pooler.wq, pooler.wk, pooler.wv, pooler.wo):
            nn.init.normal_(lin.weight, std=0.02)
            lin.bias.zero_()

    def forward(
        self, hidden_FND: torch.Tensor, group_index_GP: torch.Tensor, prev_reset_F: torch.Tensor
    ) -> torch.Tensor:
        """Raw scores (F, G) in (0, 1).

        Args:
            hidden_FND: ViT hidden states after block `prune_at`, every frame.
            group_index_GP: patch indices of each group.
            prev_reset_F: frames whose "previous frame" input is zeros (each item's first frame in
                the per-video variant; only flat frame 0 in the reference's flat variant).
        """
        num_frames, _, dim = hidden_FND.shape
        num_groups, patches_per_group = group_index_GP.shape
        groups_XPD = hidden_FND[:, group_index_GP.reshape(-1)].reshape(
            num_frames * num_groups, patches_per_group, dim
        )
        pooled_FGD = self.patch_token_pooler(groups_XPD).view(num_frames, num_groups, dim)
        prev_FGD = torch.cat([pooled_FGD.new_zeros(1, num_groups, dim), pooled_FGD[:-1]], dim=0)
        prev_FGD = prev_FGD.masked_fill(prev_reset_F.view(-1, 1, 1), 0.0)
        logits_FG1 = self.mlp(torch.cat([prev_FGD, pooled_FGD], dim=-1))
        return torch.sigmoid(logits_FG1.squeeze(-1))
