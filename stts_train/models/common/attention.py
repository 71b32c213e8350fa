"""Packed (variable-length) attention shared by the ViT and the LLM.

Shape legend (AGENTS.md#shape-legend): S packed tokens (all sequences back to back), B sequences
(B+1 entries in `cu_seqlens`), L tokens of one sequence, H query heads, Hkv key/value heads,
D head dim.

Backends, chosen per call by `resolve_backend`:
- "flash": `flash_attn_varlen_func` (CUDA, flash-attn installed);
- "torch_varlen": `torch.nn.attention.varlen.varlen_attn` (CUDA only in torch);
- "sdpa_loop": one `scaled_dot_product_attention` call per sequence (CPU; exact, no padding),
  batched into a single call when every sequence has the same length.
Key biases (the STTS soft bias) and bidirectional image blocks need an explicit mask, which the
varlen kernels cannot take, so those calls always use the SDPA path.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa_loop", "flash", "torch_varlen")


@functools.cache
def _flash_varlen():
    try:
        from flash_attn import flash_attn_varlen_func  # type: ignore[import-not-found]
    except ImportError:
        return None
    return flash_attn_varlen_func


@functools.cache
def _torch_varlen():
    try:
        from torch.nn.attention.varlen import varlen_attn  # type: ignore[attr-defined]
    except ImportError:
        return None
    return varlen_attn


def resolve_backend(requested: str, device: torch.device) -> str:
    if requested not in BACKENDS:
        raise ValueError(f"attention backend {requested!r} is not one of {BACKENDS}")
    if device.type != "cuda":
        if requested in ("flash", "torch_varlen"):
            raise ValueError(
                f"attention backend {requested!r} needs CUDA; use 'auto' or 'sdpa_loop' on {device}"
            )
        return "sdpa_loop"
    if requested == "auto":
        if _flash_varlen() is not None:
            return "flash"
        if _torch_varlen() is not None:
            return "torch_varlen"
        return "sdpa_loop"
    if requested == "flash" and _flash_varlen() is None:
        raise ValueError(
            "attention backend 'flash' requested but flash-attn is not installed (pip install "
            "'stts-train[gpu]')"
        )
    return requested


def _sequence_mask(
    length: int,
    causal: bool,
    key_bias_L: torch.Tensor | None,
    bidir_L: torch.Tensor | None,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor | None:
    """Additive float mask (L, L) for one sequence, or None when plain (causal or full)
    attention."""
    if key_bias_L is None and bidir_L is None:
        return None
    allowed_LL = torch.ones(length, length, dtype=torch.bool, device=device)
    if causal:
        allowed_LL = torch.tril(allowed_LL)
        if bidir_L is not None:
            allowed_LL = allowed_LL | (bidir_L[:, None] & bidir_L[None, :])
    mask_LL = torch.zeros(length, length, dtype=dtype, device=device)
    mask_LL = mask_LL.masked_fill(~allowed_LL, float("-inf"))
    if key_bias_L is not None:
        mask_LL = mask_LL + key_bias_L.to(dtype)[None, :]
    return mask_LL


def _expand_kv(x_SHD: torch.Tensor, num_heads: int) -> torch.Tensor:
    rep = num_heads // x_SHD.shape[1]
    return x_SHD if rep == 1 else x_SHD.repeat_interleave(rep, dim=1)


def packed_attention(
    q_SHD: torch.Tensor,
    k_SHD: torch.Tensor,
    v_SHD: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    causal: bool,
    max_seqlen: int | None = None,
    key_bias_S: torch.Tensor | None = None,
    bidirectional_S: torch.Tensor | None = None,
    backend: str = "auto",
    lengths: list[int] | None = None,
) -> torch.Tensor:
    """Attention within each packed sequence; tokens never attend across sequences.

    Args:
        q_SHD, k_SHD, v_SHD: (S, H, D) queries and (S, Hkv, D) keys/values; Hkv divides H (GQA).
        cu_seqlens: (B+1,) int32 cumulative sequence lengths, first 0, last S.
        causal: causal within each sequence.
        key_bias_S: optional (S,) additive logit bias per key (differentiable).
        bidirectional_S: optional (S,) bool; with `causal`, these tokens also attend to every
            other such token of the same sequence (Molmo2's bidirectional image tokens).
        lengths: sequence lengths as Python ints, if the caller already has them (saves a sync).

    Returns:
        (S, H, D) attention output.
    """
    num_heads = q_SHD.shape[1]
    if lengths is None:
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    if max_seqlen is None:
        max_seqlen = max(lengths, default=0)
    chosen = resolve_backend(backend, q_SHD.device)
    needs_mask = key_bias_S is not None or bidirectional_S is not None
    if chosen == "flash" and not needs_mask:
        cu = cu_seqlens.to(torch.int32)
        return _flash_varlen()(q_SHD, k_SHD, v_SHD, cu, cu, max_seqlen, max_seqlen, causal=causal)
    if chosen == "torch_varlen" and not needs_mask:
        cu = cu_seqlens.to(torch.int32)
        k_SHD, v_SHD = _expand_kv(k_SHD, num_heads), _expand_kv(v_SHD, num_heads)
        return _torch_varlen()(
            q_SHD, k_SHD, v_SHD, cu, cu, max_seqlen, max_seqlen, is_causal=causal
        )
    return _sdpa_loop(q_SHD, k_SHD, v_SHD, lengths, causal, key_bias_S, bidirectional_S)


def _sdpa_loop(
    q_SHD: torch.Tensor,
    k_SHD: torch.Tensor,
    v_SHD: torch.Tensor,
    lengths: list[int],
    causal: bool,
    key_bias_S: torch.Tensor | None,
    bidirectional_S: torch.Tensor | None,
) -> torch.Tensor:
    num_heads = q_SHD.shape[1]
    k_SHD, v_SHD = _expand_kv(k_SHD, num_heads), _expand_kv(v_SHD, num_heads)
    nonempty = [n for n in lengths if n > 0]
    if (
        nonempty
        and len(set(nonempty)) == 1
        and len(nonempty) == len(lengths)
        and bidirectional_S is None
    ):
        # Equal lengths (e.g. every ViT frame before pruning): one batched call, same math.
        n = nonempty[0]
        q_BHLD = q_SHD.view(len(lengths), n, num_heads, -1).transpose(1, 2)
        k_BHLD = k_SHD.view(len(lengths), n, num_heads, -1).transpose(1, 2)
        v_BHLD = v_SHD.view(len(lengths), n, num_heads, -1).transpose(1, 2)
        mask = None
        if key_bias_S is not None:
            mask = key_bias_S.view(len(lengths), 1, 1, n).to(q_SHD.dtype)
            if causal:
                causal_LL = torch.full(
                    (n, n), float("-inf"), dtype=q_SHD.dtype, device=q_SHD.device
                ).triu(1)
                mask = mask + causal_LL
        out_BHLD = F.scaled_dot_product_attention(
            q_BHLD, k_BHLD, v_BHLD, attn_mask=mask, is_causal=causal and mask is None
        )
        return out_BHLD.transpose(1, 2).reshape(q_SHD.shape)
    # torch.split (not per-sequence slicing): its backward is one cat, while every slice's
    # backward would materialise and add a full-size zero gradient (O(B * S) per block).
    outputs = []
    bias_parts = key_bias_S.split(lengths) if key_bias_S is not None else [None] * len(lengths)
    bidir_parts = (
        bidirectional_S.split(lengths) if bidirectional_S is not None else [None] * len(lengths)
    )
    for q, k, v, bias, bidir in zip(
        q_SHD.split(lengths), k_SHD.split(lengths), v_SHD.split(lengths), bias_parts, bidir_parts
    ):
        n = q.shape[0]
        if n == 0:
            outputs.append(q)
            continue
        mask = _sequence_mask(n, causal, bias, bidir, q_SHD.dtype, q_SHD.device)
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1).unsqueeze(0),
            k.transpose(0, 1).unsqueeze(0),
            v.transpose(0, 1).unsqueeze(0),
            attn_mask=mask,
            is_causal=causal and mask is None,
        )
        outputs.append(out[0].transpose(0, 1))
    if not outputs:
        return q_SHD.new_zeros(q_SHD.shape)
    return torch.cat(outputs, dim=0)


def cu_seqlens_from_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """(B,) lengths -> (B+1,) int32 cumulative boundaries starting at 0."""
    cu = torch.zeros(lengths.numel() + 1, dtype=torch.int32, device=lengths.device)
    cu[1:] = torch.cumsum(lengths, 0)
    return cu
