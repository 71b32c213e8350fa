"""STTS's training-free heuristic ablations (docs/pruners.md#stts-heuristics, ``prune_method``).

Both score every token by its novelty 1 - cos(x[t, p], ref[p]) and prune, per video, the
pruned_groups(N, T, keep_ratio) lowest-novelty tokens with one global ranking over the video
(stts_train.pruning.budget: exact budget, frame 0 never pruned), exactly like the learned scorer's
selection. Ties go to the earlier flat index (stable sort). Output: kept tokens sorted by
(frame, position), kind 0.

  stts_easy       ref = the previous frame.
  stts_heuristic  ref = a running reference frame: frame 0, replaced by frame t when the mean
                  similarity of frame t to it is below ``threshold`` (0.85). Reference frames
                  start new scenes and are kept whole, like frame 0. If the reference frames leave
                  fewer prunable tokens than the budget, the pass is retried with the threshold
                  lowered by ``retry_step`` (0.05), at most ``max_retries`` (5) times; after that,
                  reference frames other than frame 0 become prunable too.
  (The reference snapshot's heuristic paths are stale and crash, so this is our reading of the
  description, not a bit-parity port.)

Legend (AGENTS.md#shape-legend): T frames, N tokens per frame, D feature width, M kept tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from stts_train.errors import ConfigError
from stts_train.pruning.base import KIND_COPY, PrunerBase, PrunerInput, PrunerOutput
from stts_train.pruning.budget import pruned_groups


def _select(x_TND: Tensor, novelty_TN: Tensor, protected_T: Tensor, n_prune: int) -> PrunerOutput:
    """Prune the ``n_prune`` lowest-novelty tokens of unprotected frames; keep the rest."""
    T, N, _ = x_TND.shape
    score = novelty_TN.masked_fill(protected_T[:, None], float("inf")).reshape(-1)
    pruned = torch.argsort(score, stable=True)[:n_prune]
    keep = torch.ones(T * N, dtype=torch.bool, device=x_TND.device)
    keep[pruned] = False
    flat_M = torch.nonzero(keep)[:, 0]
    frame_M, position_M = flat_M // N, flat_M % N
    return PrunerOutput(
        x_TND[frame_M, position_M],
        frame_M,
        position_M,
        torch.full_like(flat_M, KIND_COPY),
        {"novelty_TN": novelty_TN, "protected_frame_T": protected_T},
    )


class _NoveltyPruner(PrunerBase):
    def __init__(self, keep_ratio: float = 0.5) -> None:
        if not 0.0 < keep_ratio <= 1.0:
            raise ConfigError(f"{self.name}.keep_ratio={keep_ratio} must be in (0, 1]")
        self.keep_ratio = float(keep_ratio)

    def _budget(self, video: PrunerInput) -> int:
        r = self.keep_ratio if video.keep_ratio is None else video.keep_ratio
        return pruned_groups(video.tokens_per_frame, video.num_frames, r)


class STTSEasyPruner(_NoveltyPruner):
    """Novelty against the previous frame only."""

    name = "stts_easy"

    def prune(self, video: PrunerInput) -> PrunerOutput:
        x_TND = video.features_TND
        T, N, _ = x_TND.shape
        n_prune = self._budget(video)
        xn_TND = F.normalize(x_TND, dim=-1)
        novelty_TN = torch.zeros(T, N, dtype=x_TND.dtype, device=x_TND.device)
        novelty_TN[1:] = 1 - (xn_TND[1:] * xn_TND[:-1]).sum(dim=-1)
        protected_T = torch.zeros(T, dtype=torch.bool, device=x_TND.device)
        protected_T[0] = True
        return _select(x_TND, novelty_TN, protected_T, n_prune)


class STTSHeuristicPruner(_NoveltyPruner):
    """Novelty against a running reference frame (see the module docstring)."""

    name = "stts_heuristic"

    def __init__(
        self,
        keep_ratio: float = 0.5,
        threshold: float = 0.85,
        max_retries: int = 5,
        retry_step: float = 0.05,
    ) -> None:
        super().__init__(keep_ratio)
        if max_retries < 0 or retry_step < 0:
            raise ConfigError(
                f"stts_heuristic: max_retries={max_retries} and retry_step={retry_step} "
                "must be >= 0"
            )
        self.threshold = float(threshold)
        self.max_retries = int(max_retries)
        self.retry_step = float(retry_step)

    @staticmethod
    def _pass(xn_TND: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
        T, N, _ = xn_TND.shape
        novelty_TN = torch.zeros(T, N, dtype=xn_TND.dtype, device=xn_TND.device)
        is_ref_T = torch.zeros(T, dtype=torch.bool, device=xn_TND.device)
        is_ref_T[0] = True
        ref_ND = xn_TND[0]
        for t in range(1, T):
            sim_N = (xn_TND[t] * ref_ND).sum(dim=-1)
            novelty_TN[t] = 1 - sim_N
            if sim_N.mean().item() < threshold:
                ref_ND = xn_TND[t]
                is_ref_T[t] = True
        return novelty_TN, is_ref_T

    def prune(self, video: PrunerInput) -> PrunerOutput:
        x_TND = video.features_TND
        N = x_TND.shape[1]
        n_prune = self._budget(video)
        xn_TND = F.normalize(x_TND, dim=-1)
        threshold = self.threshold
        for _ in range(self.max_retries + 1):
            novelty_TN, is_ref_T = self._pass(xn_TND, threshold)
            if int((~is_ref_T).sum()) * N >= n_prune:
                break
            threshold -= self.retry_step
        else:
            is_ref_T = torch.zeros_like(is_ref_T)
            is_ref_T[0] = True
        out = _select(x_TND, novelty_TN, is_ref_T, n_prune)
        out.diagnostics["reference_threshold"] = torch.tensor(threshold)
        return out
