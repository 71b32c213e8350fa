"""Layer factory and small shared layers.

Every projection in the model is built through a `LayerFactory`, so tensor parallelism is added
from outside (`stts_train.parallel.tp_layers`) without touching model code. The default factory
builds plain `nn.Linear`/`nn.Embedding` and runs everything on one device; model code never
imports anything distributed.

Contract for a tensor-parallel factory with `tp_size = n`:
- `column(in, out)`: output features sharded n ways (out/n per rank), input replicated.
- `row(in, out)`: input features sharded n ways, output all-reduced (replicated).
- `replicated(in, out)`: an ordinary linear, identical on every rank (scorer, pooling query).
- `vocab_embedding(vocab, dim)`: rows sharded; output replicated.
- `vocab_head(dim, vocab)`: logits sharded over the vocabulary.
- `cross_entropy(logits_shard, labels)`: per-token loss (no reduction) from sharded logits.
- `gather_vocab(logits_shard)`: full logits (for evaluation and parity tests).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from stts_train.constants import IGNORE_INDEX


class LayerFactory(Protocol):
    tp_size: int

    def column(self, in_features: int, out_features: int, bias: bool) -> nn.Module: ...

    def row(self, in_features: int, out_features: int, bias: bool) -> nn.Module: ...

    def replicated(self, in_features: int, out_features: int, bias: bool) -> nn.Module: ...

    def vocab_embedding(self, vocab_size: int, dim: int) -> nn.Module: ...

    def vocab_head(self, dim: int, vocab_size: int) -> nn.Module: ...

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...

    def gather_vocab(self, logits: torch.Tensor) -> torch.Tensor: ...


class LocalLayerFactory:
    """Single-device layers (tensor-parallel size 1)."""

    tp_size = 1

    def column(self, in_features: int, out_features: int, bias: bool) -> nn.Module:
        return nn.Linear(in_features, out_features, bias=bias)

    def row(self, in_features: int, out_features: int, bias: bool) -> nn.Module:
        return nn.Linear(in_features, out_features, bias=bias)

    def replicated(self, in_features: int, out_features: int, bias: bool) -> nn.Module:
        return nn.Linear(in_features, out_features, bias=bias)

    def vocab_embedding(self, vocab_size: int, dim: int) -> nn.Module:
        return nn.Embedding(vocab_size, dim)

    def vocab_head(self, dim: int, vocab_size: int) -> nn.Module:
        return nn.Linear(dim, vocab_size, bias=False)

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, reduction="none", ignore_index=IGNORE_INDEX)

    def gather_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        return logits


def shard_size(total: int, tp_size: int, what: str) -> int:
    """Per-rank share of a dimension split `tp_size` ways, with a clear error if it doesn't
    divide."""
    if total % tp_size:
        raise ValueError(f"{what}={total} is not divisible by the tensor-parallel size {tp_size}")
    return total // tp_size


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 statistics, as Qwen3 does, then back to the input dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def trunc_normal_fan_in_(weight: torch.Tensor) -> None:
    """Truncated normal, std sqrt(1/fan_in), cut at +-2 std (the scorer MLP init)."""
    std = math.sqrt(1.0 / weight.shape[1])
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)
