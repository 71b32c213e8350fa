"""HoliTom: outer-LLM pruning (temporal windows + static clusters + dynamic top-k), SToP + HoliTom,
and the inner-LLM merge function.

Golden variants `holitom_outer`, `stop_holitom`, `holitom_inner` (docs/pruners.md#holitom).

Outer:
  1. sim[t, p] = cos(x[t, p], x[t+1, p]);  P[s, e] = (e-s) * #{p : sim[k, p] > tau, k = s..e-1}.
  2. Windows by DP over frames (strict ``>``: single frame, then smaller windows win ties),
     reduced = dp[T-1];  r' = min(r / ((T*N - reduced) / (T*N)), 1) (Python floats).
  3. Per window [s, e] (W frames): static positions (all adjacent sims > tau; W = 1: none);
     dynamic: per frame keep ceil(nd * r') by attention top-k, ascending positions;
     static: mean over the window, c = round(m * r') DPC-kNN centres (k = min(knn_k, c), sorted
     ascending), others to the nearest centre (Euclidean), token = beta*centre + (1-beta)*mean.
  4. Output per window: [c static (kind 2, frame s), frame s dynamics, ..., frame e dynamics].

Legend (AGENTS.md#shape-legend): T frames, N tokens per frame, D feature width, L sequence length
(inner merge); local here: W frames in a window, Q static positions of a window,
C cluster centres, E candidate window ends (`run_EN`), V visual tokens, K kept and O other visual
tokens (inner merge).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from stts_train.errors import ConfigError, LayoutError
from stts_train.pruning.base import (
    KIND_COPY,
    KIND_STATIC,
    PrunerBase,
    PrunerInput,
    PrunerOutput,
)
from stts_train.pruning.training_free.dpc import NoiseSource, density_peak_score, pairwise_dist_BPP
from stts_train.pruning.training_free.stop import (
    DEFAULT_GAMMA,
    sink_score_N,
    stsp_ranking_TN,
    sttp_static_N,
)


def adjacent_similarity_TN(features_TND: Tensor) -> Tensor:
    """cos(x[t, p], x[t+1, p]) for t = 0..T-2: shape (T-1, N)."""
    x_TND = F.normalize(features_TND, dim=-1)
    return (x_TND[:-1] * x_TND[1:]).sum(dim=-1)


def static_windows(
    sim_TN: Tensor, tau: float, max_window_size: int
) -> tuple[list[tuple[int, int]], int]:
    """DP segmentation maximising removable static tokens. Returns (windows [s, e], reduced)."""
    T = sim_TN.shape[0] + 1
    above_TN = sim_TN > tau
    # static_count[s][e]: positions static over every pair s..e-1 (s < e)
    static_count = [[0] * T for _ in range(T)]
    for s in range(T - 1):
        run_EN = torch.cumprod(above_TN[s:].to(torch.int32), dim=0)  # row e-1-s: pairs s..e-1
        static_count[s][s + 1 :] = run_EN.sum(dim=1).tolist()
    dp = [0] * (T + 1)  # dp[i + 1] = best for frames 0..i; dp[0] = 0 is "dp[-1]"
    start = [0] * T
    for i in range(T):
        best, best_start = dp[i], i
        for w in range(2, min(i + 1, max_window_size) + 1):
            j = i - w
            value = dp[j + 1] + (i - j - 1) * static_count[j + 1][i]
            if value > best:
                best, best_start = value, j + 1
        dp[i + 1] = best
        start[i] = best_start
    windows: list[tuple[int, int]] = []
    i = T - 1
    while i >= 0:
        windows.append((start[i], i))
        i = start[i] - 1
    return windows[::-1], dp[T]


def rescaled_ratio(retain_ratio: float, T: int, N: int, reduced: int) -> float:
    total = T * N
    return min(retain_ratio / ((total - reduced) / total), 1)


class HoliTomPruner(PrunerBase):
    """HoliTom outer-LLM pruning.

    retain_ratio r (overridden by ``PrunerInput.keep_ratio``), tau, beta, knn_k, max_window_size.
    dynamic_context_share_D: only 0 is supported (the reference default and every golden case).
    Noise: one U[0,1) draw of shape (1, Q) per window with >= 2 frames and c > 0, in window order.
    """

    name = "holitom"

    def __init__(
        self,
        retain_ratio: float = 0.1,
        tau: float = 0.8,
        beta: float = 0.6,
        knn_k: int = 7,
        max_window_size: int = 1024,
        dynamic_context_share_D: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not 0.0 < retain_ratio <= 1.0:
            raise ConfigError(f"holitom.retain_ratio={retain_ratio} must be in (0, 1]")
        if dynamic_context_share_D != 0:
            raise ConfigError(
                f"holitom.dynamic_context_share_D={dynamic_context_share_D} is not supported "
                "(contextual dynamic tokens are not implemented); use 0, the HoliTom default"
            )
        if knn_k < 1 or max_window_size < 1:
            raise ConfigError(
                f"holitom: knn_k={knn_k} and max_window_size={max_window_size} must be >= 1"
            )
        self.retain_ratio = float(retain_ratio)
        self.tau = float(tau)
        self.beta = float(beta)
        self.knn_k = int(knn_k)
        self.max_window_size = int(max_window_size)
        self.dynamic_context_share_D = float(dynamic_context_share_D)
        self.seed = int(seed)

    # --- hooks the SToP variant overrides -------------------------------------------------
    def _sink(self, attention_TN: Tensor) -> Tensor | None:
        return None

    def _ranking_TN(self, attention_TN: Tensor, sink_N: Tensor | None) -> Tensor:
        return attention_TN

    def _static_N(self, sim_WN: Tensor, sink_N: Tensor | None) -> Tensor:
        return (sim_WN > self.tau).all(dim=0)

    def _centre_score(self, score_Q: Tensor, static_pos_Q: Tensor, sink_N: Tensor | None) -> Tensor:
        return score_Q

    # --------------------------------------------------------------------------------------
    def prune(self, video: PrunerInput) -> PrunerOutput:
        x_TND = video.features_TND
        attention_TN = video.require_attention(self.name)
        T, N, D = x_TND.shape
        device = x_TND.device
        r = self.retain_ratio if video.keep_ratio is None else video.keep_ratio
        sink_N = self._sink(attention_TN)
        ranking_TN = self._ranking_TN(attention_TN, sink_N)
        sim_TN = adjacent_similarity_TN(x_TND)
        windows, reduced = static_windows(sim_TN, self.tau, self.max_window_size)
        r_prime = rescaled_ratio(r, T, N, reduced)
        noise = NoiseSource(video.noise, video.generator, self.seed)

        feats: list[Tensor] = []
        frames: list[Tensor] = []
        positions: list[Tensor] = []
        kinds: list[Tensor] = []

        def emit_dynamic(t: int, candidates_N: Tensor) -> None:
            nd = int(candidates_N.shape[0])
            kd = math.ceil(nd * r_prime)
            if kd == 0:
                return
            top = torch.topk(ranking_TN[t, candidates_N], kd).indices
            pos = candidates_N[top].sort().values
            feats.append(x_TND[t, pos])
            frames.append(torch.full((kd,), t, dtype=torch.long, device=device))
            positions.append(pos)
            kinds.append(torch.full((kd,), KIND_COPY, dtype=torch.long, device=device))

        all_pos_N = torch.arange(N, device=device)
        for s, e in windows:
            if s == e:
                emit_dynamic(s, all_pos_N)
                continue
            static_N = self._static_N(sim_TN[s:e], sink_N)
            static_pos_Q = torch.nonzero(static_N)[:, 0]
            dynamic_pos = torch.nonzero(~static_N)[:, 0]
            m = int(static_pos_Q.shape[0])
            c = round(m * r_prime)
            if c > 0:
                mean_QD = x_TND[s : e + 1, static_pos_Q].mean(dim=0)
                dist_QQ = pairwise_dist_BPP(mean_QD[None])[0]
                noise_Q = noise.draw((1, m))[0]
                score_Q = density_peak_score(dist_QQ[None], min(self.knn_k, c), noise_Q[None])[0]
                score_Q = self._centre_score(score_Q, static_pos_Q, sink_N)
                centres_C = torch.topk(score_Q, c).indices.sort().values
                nearest_Q = dist_QQ[:, centres_C].argmin(dim=1)
                is_centre_Q = torch.zeros(m, dtype=torch.bool, device=device)
                is_centre_Q[centres_C] = True
                onehot_QC = F.one_hot(nearest_Q, c).to(x_TND.dtype)
                onehot_QC[is_centre_Q] = 0
                count_C1 = onehot_QC.sum(dim=0)[:, None]
                mean_CD = (onehot_QC.T @ mean_QD) / count_C1.clamp(min=1)
                centre_CD = mean_QD[centres_C]
                merged_CD = torch.where(
                    count_C1 > 0, self.beta * centre_CD + (1 - self.beta) * mean_CD, centre_CD
                )
                feats.append(merged_CD)
                frames.append(torch.full((c,), s, dtype=torch.long, device=device))
                positions.append(static_pos_Q[centres_C])
                kinds.append(torch.full((c,), KIND_STATIC, dtype=torch.long, device=device))
            for t in range(s, e + 1):
                emit_dynamic(t, dynamic_pos)
        if video.noise is not None:
            noise.check_exhausted()

        diagnostics = {
            "windows_W2": torch.tensor(windows, dtype=torch.long).view(-1, 2),
            "rescaled_retain_ratio": torch.tensor(r_prime, dtype=torch.float64),
        }
        if sink_N is not None:
            diagnostics["sink_score_N"] = sink_N
        if not feats:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return PrunerOutput(
                x_TND.new_zeros(0, D), empty, empty.clone(), empty.clone(), diagnostics
            )
        return PrunerOutput(
            torch.cat(feats), torch.cat(frames), torch.cat(positions), torch.cat(kinds), diagnostics
        )


class StopHoliTomPruner(HoliTomPruner):
    """SToP + HoliTom: dynamic tokens by ``A - mu_s * s``; windows/r' unchanged (tau).

    sttp_fixed_threshold (quirk ``stop_holitom_sttp_fixed_threshold``, default True): the static
        mask is ``sim + mu_t * s > sttp_threshold`` (0.8) whatever tau is. False uses tau.
    centre_sink_penalty_active (quirk ``stop_holitom_centre_sink_penalty``, default True, also at
        mu = 0): static centre scores get ``- centre_sink_penalty * s`` (0.3).
    """

    name = "stop_holitom"

    def __init__(
        self,
        retain_ratio: float = 0.1,
        tau: float = 0.8,
        beta: float = 0.6,
        knn_k: int = 7,
        max_window_size: int = 1024,
        dynamic_context_share_D: float = 0.0,
        seed: int = 0,
        mu_s: float = 0.04,
        mu_t: float = 0.07,
        gamma: float = DEFAULT_GAMMA,
        sttp_threshold: float = 0.8,
        centre_sink_penalty: float = 0.3,
        sttp_fixed_threshold: bool = True,
        centre_sink_penalty_active: bool = True,
    ) -> None:
        super().__init__(
            retain_ratio, tau, beta, knn_k, max_window_size, dynamic_context_share_D, seed
        )
        self.mu_s = float(mu_s)
        self.mu_t = float(mu_t)
        self.gamma = float(gamma)
        self.sttp_threshold = float(sttp_threshold)
        self.centre_sink_penalty = float(centre_sink_penalty)
        self.sttp_fixed_threshold = bool(sttp_fixed_threshold)
        self.centre_sink_penalty_active = bool(centre_sink_penalty_active)

    def _sink(self, attention_TN: Tensor) -> Tensor | None:
        return sink_score_N(attention_TN, self.gamma)

    def _ranking_TN(self, attention_TN: Tensor, sink_N: Tensor | None) -> Tensor:
        assert sink_N is not None
        return stsp_ranking_TN(attention_TN, sink_N, self.mu_s)

    def _static_N(self, sim_WN: Tensor, sink_N: Tensor | None) -> Tensor:
        assert sink_N is not None
        threshold = self.sttp_threshold if self.sttp_fixed_threshold else self.tau
        return sttp_static_N(sim_WN, sink_N, self.mu_t, threshold)

    def _centre_score(self, score_Q: Tensor, static_pos_Q: Tensor, sink_N: Tensor | None) -> Tensor:
        if not self.centre_sink_penalty_active:
            return score_Q
        assert sink_N is not None
        return score_Q - self.centre_sink_penalty * sink_N[static_pos_Q]


def holitom_inner_merge(
    hidden_LD: Tensor,
    attention_last_query_L: Tensor,
    visual_start: int,
    visual_len: int,
    merge_ratio: float,
) -> tuple[Tensor, Tensor]:
    """HoliTom inner-LLM merge (golden variant `holitom_inner`), prefill only.

    hidden_LD: hidden states entering LLM layer k; attention_last_query_L: layer k-1's head-mean
    attention from the last position. Keeps round(V * (1 - merge_ratio)) visual tokens by that
    attention; every other visual token j (ascending) is folded into its most cosine-similar kept
    token i (similarities from the unmerged states) by the running average h_i <- (h_i + h_j) / 2.
    Returns (hidden_L'D, position_ids_L'): the text rows and kept visual rows in sequence order,
    and their original positions (gaps kept, for RoPE).

    The reference's layer k-1 runs without a causal mask at prefill (quirk
    ``holitom_inner_noncausal_layer``); that belongs to the model integration, not this function.
    """
    L = hidden_LD.shape[0]
    if attention_last_query_L.shape != (L,):
        raise LayoutError(
            f"holitom_inner_merge: attention_last_query_L has shape "
            f"{tuple(attention_last_query_L.shape)}, expected ({L},) to match hidden_LD"
        )
    if visual_start < 0 or visual_len < 1 or visual_start + visual_len > L:
        raise LayoutError(
            f"holitom_inner_merge: visual span [{visual_start}, {visual_start + visual_len}) does "
            f"not fit the {L}-row sequence"
        )
    if not 0.0 <= merge_ratio < 1.0:
        raise ConfigError(f"holitom_inner_merge: merge_ratio={merge_ratio} must be in [0, 1)")
    V = visual_len
    n_keep = round(V * (1 - merge_ratio))
    if n_keep < 1:
        raise ConfigError(
            f"holitom_inner_merge: merge_ratio={merge_ratio} keeps no visual token of {V}"
        )
    device = hidden_LD.device
    visual_V = hidden_LD[visual_start : visual_start + V]
    keep_K = torch.topk(attention_last_query_L[visual_start : visual_start + V], n_keep).indices
    is_kept_V = torch.zeros(V, dtype=torch.bool, device=device)
    is_kept_V[keep_K] = True
    others_O = torch.nonzero(~is_kept_V)[:, 0]  # ascending
    merged_VD = visual_V.clone()
    if others_O.numel():
        sim_OK = F.normalize(visual_V[others_O], dim=-1) @ F.normalize(visual_V[keep_K], dim=-1).T
        target_O = keep_K[sim_OK.argmax(dim=1)]
        # Rank of each j among the tokens folded into the same target, in ascending j order. Round
        # r applies every target's r-th update at once: per target the order is the sequential one.
        order = torch.argsort(target_O, stable=True)
        sorted_targets = target_O[order]
        first = torch.ones_like(sorted_targets, dtype=torch.bool)
        first[1:] = sorted_targets[1:] != sorted_targets[:-1]
        group_start = torch.cummax(
            torch.where(first, torch.arange(len(order), device=device), torch.zeros_like(order)),
            dim=0,
        ).values
        rank_O = torch.empty_like(order)
        rank_O[order] = torch.arange(len(order), device=device) - group_start
        for step in range(int(rank_O.max().item()) + 1):
            sel = rank_O == step
            tgt = target_O[sel]
            merged_VD[tgt] = (merged_VD[tgt] + visual_V[others_O[sel]]) / 2
    out_LD = hidden_LD.clone()
    out_LD[visual_start : visual_start + V] = merged_VD
    keep_row_L = torch.ones(L, dtype=torch.bool, device=device)
    keep_row_L[visual_start : visual_start + V] = is_kept_V
    position_ids = torch.nonzero(keep_row_L)[:, 0]
    return out_LD[position_ids], position_ids
