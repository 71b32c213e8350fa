"""Packed attention vs dense SDPA with a block-diagonal mask (the oracle)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stts_train.models.common.attention import cu_seqlens_from_lengths, packed_attention


def dense_oracle(q, k, v, lengths, causal, key_bias=None, bidir=None):
    total, heads, _ = q.shape
    k = k.repeat_interleave(heads // k.shape[1], dim=1)
    v = v.repeat_interleave(heads // v.shape[1], dim=1)
    seq = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    pos = torch.arange(total)
    allowed = seq[:, None] == seq[None, :]
    if causal:
        rule = pos[None, :] <= pos[:, None]
        if bidir is not None:
            rule = rule | (bidir[:, None] & bidir[None, :])
        allowed = allowed & rule
    mask = torch.zeros(total, total).masked_fill(~allowed, float("-inf"))
    if key_bias is not None:
        mask = mask + key_bias[None, :]
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask
    )
    return out.transpose(0, 1)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lengths", [[5, 9, 1, 7], [6, 6, 6], [4, 0, 3]])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_matches_block_diagonal_dense(causal, lengths, kv_heads):
    gen = torch.Generator().manual_seed(0)
    total = sum(lengths)
    q = torch.randn(total, 4, 8, generator=gen)
    k = torch.randn(total, kv_heads, 8, generator=gen)
    v = torch.randn(total, kv_heads, 8, generator=gen)
    cu = cu_seqlens_from_lengths(torch.tensor(lengths))
    out = packed_attention(q, k, v, cu, causal=causal, backend="sdpa_loop")
    assert torch.allclose(out, dense_oracle(q, k, v, lengths, causal), atol=1e-5)


@pytest.mark.parametrize("lengths", [[6, 6, 6], [3, 8]])
def test_key_bias_and_bidirectional(lengths):
    gen = torch.Generator().manual_seed(1)
    total = sum(lengths)
    q, k, v = (torch.randn(total, 2, 8, generator=gen) for _ in range(3))
    cu = cu_seqlens_from_lengths(torch.tensor(lengths))
    bias = -2 * torch.rand(total, generator=gen)
    out = packed_attention(q, k, v, cu, causal=False, key_bias_S=bias, backend="sdpa_loop")
    assert torch.allclose(out, dense_oracle(q, k, v, lengths, False, key_bias=bias), atol=1e-5)
    bidir = torch.rand(total, generator=gen) > 0.5
    out = packed_attention(q, k, v, cu, causal=True, bidirectional_S=bidir, backend="sdpa_loop")
    assert torch.allclose(out, dense_oracle(q, k, v, lengths, True, bidir=bidir), atol=1e-5)


def test_gpu_backends_refused_on_cpu():
    q = torch.randn(4, 1, 8)
    with pytest.raises(ValueError, match="needs CUDA"):
        packed_attention(
            q, q, q, torch.tensor([0, 4], dtype=torch.int32), causal=True, backend="flash"
        )
