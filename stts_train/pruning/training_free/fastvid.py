"""FastVID (official LLaVA-OneVision version) and SToP + FastVID.

Golden variants `fastvid_ov`, `stop_fastvid` (docs/pruners.md#fastvid).

Budgets: R = int(N * r), C = int(R * d) context tokens, S = R - C salient tokens per frame.
  1. DySeg: sigma_t = cos(G_t, G_t+1); cuts = sorted unique(the c-1 smallest sigma, {sigma < tau});
     segment sizes = diff([-1, cuts..., T-1]).
  2. Context budget: segment of length L, m = ceil(L/p), K = (C*L)//m; frame j of the segment gets
     K if (L-1-j) % p == 0 else 0 (so a single-frame segment gets C).
  3. Salient: top-S of the ranking per frame, kept unchanged (kind 0).
  4. Density: DPC-kNN (k=4) score of each frame's N-S non-salient tokens (ascending positions).
  5. Frames with budget == C: C anchors by score; pool = the frame's non-salient tokens.
  6. Multi-frame segments: every frame with budget > C picks K anchors; pool = the non-salient
     tokens of all the segment's frames.
     Merge (5, 6): each pool token goes to its max-cosine anchor; n_k assigned,
     w_k = max(1/(n_k+1), beta), ctx_k = w_k * anchor + (1 - w_k) * mean(assigned) (kind 1).
  7. Output sorted by flat index frame * N + position.

Legend (AGENTS.md#shape-legend): T frames, N tokens per frame, D feature width, M output tokens;
local here: G global feature width, S salient per frame, R non-salient ("rest") per frame = N - S,
A anchors, P pool tokens.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from stts_train.errors import ConfigError, LayoutError
from stts_train.pruning.base import KIND_COPY, KIND_MERGED, PrunerBase, PrunerInput, PrunerOutput
from stts_train.pruning.training_free.dpc import NoiseSource, density_peak_score, pairwise_dist_BPP
from stts_train.pruning.training_free.stop import DEFAULT_GAMMA, sink_score_N, stsp_ranking_TN


def segment_sizes(
    global_features_TG: Tensor, num_segments: int, tau: float, strict: bool = False
) -> list[int]:
    """DySeg. With T - 1 < num_segments - 1 the reference fails; here (``strict=False``) every
    transition becomes a cut, i.e. one segment per frame. ``strict=True`` raises instead."""
    T = global_features_TG.shape[0]
    if T == 1:
        return [1]
    g_TG = global_features_TG / global_features_TG.norm(dim=-1, keepdim=True)
    sigma_T1 = (g_TG[:-1] * g_TG[1:]).sum(dim=-1)
    n_cuts = num_segments - 1
    if n_cuts > T - 1:
        if strict:
            raise LayoutError(
                f"fastvid: {T} frames cannot make segments_c={num_segments} segments (needs at "
                f"least {num_segments} frames); sample more frames or lower segments_c"
            )
        n_cuts = T - 1
    cuts = (
        set(torch.topk(sigma_T1, n_cuts, largest=False).indices.tolist()) if n_cuts > 0 else set()
    )
    cuts |= set(torch.nonzero(sigma_T1 < tau)[:, 0].tolist())
    bounds = [-1, *sorted(cuts), T - 1]
    return [b - a for a, b in itertools.pairwise(bounds)]


def context_budget(sizes: list[int], C: int, stride: int) -> list[int]:
    """Per-frame context-token budget from the segment sizes (DTM anchor distribution)."""
    budget: list[int] = []
    for L in sizes:
        m = math.ceil(L / stride)
        K = (C * L) // m
        budget += [K if (L - 1 - j) % stride == 0 else 0 for j in range(L)]
    return budget


def _merge_into_anchors(anchors_AD: Tensor, pool_PD: Tensor, beta: float) -> Tensor:
    """Max-cosine assignment of the pool to the anchors, then the beta-floored weighted merge."""
    A = anchors_AD.shape[0]
    sim_PA = F.normalize(pool_PD, dim=-1) @ F.normalize(anchors_AD, dim=-1).T
    onehot_PA = F.one_hot(sim_PA.argmax(dim=-1), A).to(pool_PD.dtype)
    count_A1 = onehot_PA.sum(dim=0)[:, None]
    mean_AD = (onehot_PA.T @ pool_PD) / count_A1.clamp(min=1)
    w_A1 = torch.clamp(1.0 / (count_A1 + 1), min=beta)
    return w_A1 * anchors_AD + (1 - w_A1) * mean_AD


class FastVIDPruner(PrunerBase):
    """FastVID (LLaVA-OV). Parameters as in the golden JSON; defaults = the authors' script.

    retain_ratio r (overridden by ``PrunerInput.keep_ratio``), segments_c c, segment_tau tau,
    context_share_d d, anchor_stride_p p, merge_beta beta, knn_k (4).
    strict_min_frames: raise like the reference when T < segments_c (default: one segment per
    frame instead). Global features: ``PrunerInput.global_features_TG``; when absent, the mean
    feature of each frame is used.
    """

    name = "fastvid"

    def __init__(
        self,
        retain_ratio: float = 0.1,
        segments_c: int = 8,
        segment_tau: float = 0.9,
        context_share_d: float = 0.4,
        anchor_stride_p: int = 4,
        merge_beta: float = 0.6,
        knn_k: int = 4,
        strict_min_frames: bool = False,
        seed: int = 0,
    ) -> None:
        if not 0.0 < retain_ratio <= 1.0:
            raise ConfigError(f"fastvid.retain_ratio={retain_ratio} must be in (0, 1]")
        if segments_c < 1 or anchor_stride_p < 1 or knn_k < 1:
            raise ConfigError(
                f"fastvid: segments_c={segments_c}, anchor_stride_p={anchor_stride_p} and "
                f"knn_k={knn_k} must all be >= 1"
            )
        if not 0.0 <= context_share_d <= 1.0:
            raise ConfigError(f"fastvid.context_share_d={context_share_d} must be in [0, 1]")
        self.retain_ratio = float(retain_ratio)
        self.segments_c = int(segments_c)
        self.segment_tau = float(segment_tau)
        self.context_share_d = float(context_share_d)
        self.anchor_stride_p = int(anchor_stride_p)
        self.merge_beta = float(merge_beta)
        self.knn_k = int(knn_k)
        self.strict_min_frames = bool(strict_min_frames)
        self.seed = int(seed)

    # --- hooks the SToP variant overrides -------------------------------------------------
    def _sink(self, attention_TN: Tensor, diagnostics: dict[str, Tensor]) -> Tensor | None:
        return None

    def _ranking_TN(self, attention_TN: Tensor, sink_N: Tensor | None) -> Tensor:
        return attention_TN

    def _density_penalty(self) -> float:
        """Extra ``penalty * s`` taken off every density score (SToP quirk)."""
        return 0.0

    def _multiframe_penalty(self) -> float:
        """Extra ``penalty * s`` taken off multi-frame anchor scores (SToP quirk)."""
        return 0.0

    # --------------------------------------------------------------------------------------
    def budgets(self, N: int, keep_ratio: float | None = None) -> tuple[int, int, int]:
        """(R, C, S): kept, context and salient tokens per frame (reference float truncation)."""
        r = self.retain_ratio if keep_ratio is None else keep_ratio
        R = int(N * r)
        C = int(R * self.context_share_d)
        return R, C, R - C

    def prune(self, video: PrunerInput) -> PrunerOutput:
        x_TND = video.features_TND
        attention_TN = video.require_attention(self.name)
        T, N, D = x_TND.shape
        device = x_TND.device
        _, C, S = self.budgets(N, video.keep_ratio)
        diagnostics: dict[str, Tensor] = {}
        sink_N = self._sink(attention_TN, diagnostics)
        ranking_TN = self._ranking_TN(attention_TN, sink_N)
        gfeat_TG = video.global_features_TG
        if gfeat_TG is None:
            gfeat_TG = x_TND.mean(dim=1)

        sizes = segment_sizes(gfeat_TG, self.segments_c, self.segment_tau, self.strict_min_frames)
        budget_T = context_budget(sizes, C, self.anchor_stride_p)
        diagnostics["segment_sizes_S"] = torch.tensor(sizes, dtype=torch.long)
        diagnostics["context_budget_T"] = torch.tensor(budget_T, dtype=torch.long)

        salient_TS = torch.topk(ranking_TN, S, dim=1).indices
        is_salient_TN = torch.zeros(T, N, dtype=torch.bool, device=device)
        is_salient_TN.scatter_(1, salient_TS, True)
        Rn = N - S
        rest_TR = torch.nonzero(~is_salient_TN)[:, 1].view(T, Rn)
        x_rest_TRD = torch.gather(x_TND, 1, rest_TR[..., None].expand(T, Rn, D))

        noise = NoiseSource(video.noise, video.generator, self.seed)
        noise_TR = noise.draw((T, Rn))
        if video.noise is not None:
            noise.check_exhausted()

        feats = [torch.gather(x_TND, 1, salient_TS[..., None].expand(T, S, D)).reshape(T * S, D)]
        flat = [(torch.arange(T, device=device)[:, None] * N + salient_TS).reshape(-1)]
        kinds = [torch.full((T * S,), KIND_COPY, dtype=torch.long, device=device)]

        if C > 0 and Rn > 0:
            score_TR = density_peak_score(
                pairwise_dist_BPP(x_rest_TRD), min(self.knn_k, Rn), noise_TR
            )
            if sink_N is not None and self._density_penalty():
                score_TR = score_TR - self._density_penalty() * sink_N[rest_TR]
            seg_start = 0
            for L in sizes:
                frames = range(seg_start, seg_start + L)
                K_seg = budget_T[seg_start + L - 1]
                for a in frames:
                    k_a = budget_T[a]
                    if k_a == 0:
                        continue
                    if k_a == C:  # single-frame context (also K == C anchor frames)
                        anchor_score_R = score_TR[a]
                        pool_PD = x_rest_TRD[a]
                        n_anchor = C
                    elif k_a > C:  # multi-frame segment anchor frame
                        anchor_score_R = score_TR[a]
                        if sink_N is not None and self._multiframe_penalty():
                            anchor_score_R = (
                                anchor_score_R - self._multiframe_penalty() * sink_N[rest_TR[a]]
                            )
                        pool_PD = x_rest_TRD[seg_start : seg_start + L].reshape(-1, D)
                        n_anchor = min(K_seg, Rn)  # the reference would fail above Rn
                    else:
                        continue
                    anchors_A = torch.topk(anchor_score_R, n_anchor).indices
                    merged_AD = _merge_into_anchors(
                        x_rest_TRD[a, anchors_A], pool_PD, self.merge_beta
                    )
                    feats.append(merged_AD)
                    flat.append(a * N + rest_TR[a, anchors_A])
                    kinds.append(
                        torch.full((n_anchor,), KIND_MERGED, dtype=torch.long, device=device)
                    )
                seg_start += L

        features_MD = torch.cat(feats)
        flat_M = torch.cat(flat)
        kind_M = torch.cat(kinds)
        order = torch.argsort(flat_M)
        flat_M = flat_M[order]
        if sink_N is not None:
            diagnostics["sink_score_N"] = sink_N
        return PrunerOutput(features_MD[order], flat_M // N, flat_M % N, kind_M[order], diagnostics)


class StopFastVIDPruner(FastVIDPruner):
    """SToP + FastVID: salient tokens by ``A - mu_s * s``.

    density_sink_penalty: the hard-coded 0.3 of the SToP code.
    density_sink_penalty_active (quirk ``stop_fastvid_density_sink_penalty``): density scores get
        ``- penalty * s``. None (default) = the reference rule, active iff mu_s != 0.
    double_penalty_multiframe (quirk ``stop_fastvid_double_penalty_multiframe``): multi-frame
        anchor frames get a second ``- penalty * s`` (0.6 s in total). None = active iff mu_s != 0.
    """

    name = "stop_fastvid"

    def __init__(
        self,
        retain_ratio: float = 0.1,
        segments_c: int = 8,
        segment_tau: float = 0.9,
        context_share_d: float = 0.4,
        anchor_stride_p: int = 4,
        merge_beta: float = 0.6,
        knn_k: int = 4,
        strict_min_frames: bool = False,
        seed: int = 0,
        mu_s: float = 0.02,
        gamma: float = DEFAULT_GAMMA,
        density_sink_penalty: float = 0.3,
        density_sink_penalty_active: bool | None = None,
        double_penalty_multiframe: bool | None = None,
    ) -> None:
        super().__init__(
            retain_ratio,
            segments_c,
            segment_tau,
            context_share_d,
            anchor_stride_p,
            merge_beta,
            knn_k,
            strict_min_frames,
            seed,
        )
        self.mu_s = float(mu_s)
        self.gamma = float(gamma)
        self.density_sink_penalty = float(density_sink_penalty)
        on = self.mu_s != 0.0
        self.density_sink_penalty_active = (
            on if density_sink_penalty_active is None else bool(density_sink_penalty_active)
        )
        self.double_penalty_multiframe = (
            on if double_penalty_multiframe is None else bool(double_penalty_multiframe)
        )

    def _sink(self, attention_TN: Tensor, diagnostics: dict[str, Tensor]) -> Tensor | None:
        return sink_score_N(attention_TN, self.gamma)

    def _ranking_TN(self, attention_TN: Tensor, sink_N: Tensor | None) -> Tensor:
        assert sink_N is not None
        return stsp_ranking_TN(attention_TN, sink_N, self.mu_s)

    def _density_penalty(self) -> float:
        return self.density_sink_penalty if self.density_sink_penalty_active else 0.0

    def _multiframe_penalty(self) -> float:
        return self.density_sink_penalty if self.double_penalty_multiframe else 0.0
