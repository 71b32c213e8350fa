"""SToP (sink-token-aware pruning): the sink score and its spatial (STSP) / temporal (STTP) uses.

Used by every `stop_*` golden variant (docs/pruners.md#stop):
    u_p = (mean_t A[t, p]) ** gamma
    s_p = (u_p - min u) / (max u - min u + 1e-12)           one row, shared by every frame
    STSP: rank by A[t, p] - mu_s * s_p
    STTP: static iff cos(x_t,p, x_t+1,p) + mu_t * s_p > threshold for every pair of the window

The SToP wrappers of VisionZip / FastVID / HoliTom (visionzip.py, fastvid.py, holitom.py) use these.
Legend (AGENTS.md#shape-legend): T frames, N tokens per frame; local here: W frames of a window.
"""

from __future__ import annotations

from torch import Tensor

DEFAULT_GAMMA = 1.1


def sink_score_N(attention_TN: Tensor, gamma: float = DEFAULT_GAMMA) -> Tensor:
    """Min-max normalised, gamma-sharpened mean attention per grid position, in [0, 1]."""
    u_N = attention_TN.mean(dim=0) ** gamma
    return (u_N - u_N.min()) / (u_N.max() - u_N.min() + 1e-12)


def stsp_ranking_TN(attention_TN: Tensor, sink_N: Tensor, mu_s: float) -> Tensor:
    """STSP: attention with sink positions pushed down, used in place of attention for top-k."""
    return attention_TN - mu_s * sink_N


def sttp_static_N(sim_WN: Tensor, sink_N: Tensor, mu_t: float, threshold: float = 0.8) -> Tensor:
    """STTP static mask over a window's adjacent similarities ``sim_WN`` (W-1 pairs, N tokens)."""
    return ((sim_WN + mu_t * sink_N) > threshold).all(dim=0)


def top_sink_positions(sink_N: Tensor, count: int) -> set[int]:
    """The ``count`` grid positions with the largest sink score."""
    count = min(count, sink_N.shape[0])
    return set(sink_N.topk(count).indices.tolist())
