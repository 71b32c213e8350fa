"""VisionZip, SigLIP/video port (no CLS token), and SToP + VisionZip.

Golden variants `visionzip_video`, `stop_visionzip` (docs/pruners.md#visionzip). Per frame t:
  1. d = int(S * dominant_ratio) dominant tokens = top-d of the ranking (attention, or the STSP
     ranking for SToP), output in ascending position order;
  2. the other M = N - d positions (ascending) form ``rest``; their keys are L2-normalised;
  3. contextual targets are list positions 0, step, 2*step, ... (first c = S - d),
     step = max(1, M//c);
  4. every non-target element goes to the target with the largest key cosine;
  5. contextual token = target feature + mean of its assigned features (a sum, not an average);
  6. frame output = [d dominant (ascending), c contextual (target order)].
Output: T * S tokens; kind 0 dominant, kind 1 contextual (position = the target's grid position).

The ``grid`` LLaVA-Video layout (and its position-scramble bug) is a property of the host model's
token layout and is not reproduced here.

Legend (AGENTS.md#shape-legend): T frames, N tokens per frame, D feature width; local here:
K key width, d dominant and M non-dominant tokens per frame, C contextual tokens per frame,
O non-target tokens of the rest, S tokens kept per frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from stts_train.errors import ConfigError, LayoutError
from stts_train.pruning.base import KIND_COPY, KIND_MERGED, PrunerBase, PrunerInput, PrunerOutput
from stts_train.pruning.training_free.stop import (
    DEFAULT_GAMMA,
    sink_score_N,
    stsp_ranking_TN,
    top_sink_positions,
)

DOMINANT_RATIO = 54 / 64


class VisionZipPruner(PrunerBase):
    """VisionZip video port.

    budget_per_frame: S tokens kept per frame (HoliTom/SToP scripts: 20/30/40/50 for 10/15/20/25%).
        A ``PrunerInput.keep_ratio`` overrides it with S = int(N * keep_ratio) (at least 1).
    dominant_ratio: share of S kept as dominant tokens (54/64).
    Keys: ``PrunerInput.keys_TNK``; when absent the features themselves are used as keys.
    """

    name = "visionzip"

    def __init__(self, budget_per_frame: int = 20, dominant_ratio: float = DOMINANT_RATIO) -> None:
        if budget_per_frame < 1:
            raise ConfigError(f"visionzip.budget_per_frame={budget_per_frame} must be >= 1")
        if not 0.0 <= dominant_ratio <= 1.0:
            raise ConfigError(f"visionzip.dominant_ratio={dominant_ratio} must be in [0, 1]")
        self.budget_per_frame = int(budget_per_frame)
        self.dominant_ratio = float(dominant_ratio)

    # --- hooks the SToP variant overrides -------------------------------------------------
    def _ranking_TN(self, attention_TN: Tensor, diagnostics: dict[str, Tensor]) -> Tensor:
        return attention_TN

    def _targets(self, M: int, c: int, diagnostics: dict[str, Tensor]) -> list[int]:
        step = max(1, M // c)
        return list(range(0, M, step))[:c]

    # --------------------------------------------------------------------------------------
    def budget(self, video: PrunerInput) -> int:
        N = video.tokens_per_frame
        S = self.budget_per_frame
        if video.keep_ratio is not None:
            S = max(1, int(N * video.keep_ratio))
        if S > N:
            raise LayoutError(
                f"{self.name}: budget_per_frame={S} exceeds the {N} tokens per frame; lower it"
            )
        return S

    def prune(self, video: PrunerInput) -> PrunerOutput:
        x_TND = video.features_TND
        attention_TN = video.require_attention(self.name)
        keys_TNK = video.keys_TNK if video.keys_TNK is not None else x_TND
        T, N, D = x_TND.shape
        S = self.budget(video)
        d = int(S * self.dominant_ratio)
        c = S - d
        M = N - d
        diagnostics: dict[str, Tensor] = {}
        ranking_TN = self._ranking_TN(attention_TN, diagnostics)

        dominant_Td = torch.topk(ranking_TN, d, dim=1).indices.sort(dim=1).values
        is_dominant_TN = torch.zeros(T, N, dtype=torch.bool, device=x_TND.device)
        is_dominant_TN.scatter_(1, dominant_Td, True)
        rest_TM = torch.nonzero(~is_dominant_TN)[:, 1].view(T, M)  # ascending per frame
        dominant_TdD = torch.gather(x_TND, 1, dominant_Td[..., None].expand(T, d, D))

        parts_feat = [dominant_TdD]
        parts_pos = [dominant_Td]
        kinds = [KIND_COPY] * d
        if c > 0:
            targets = self._targets(M, c, diagnostics)
            diagnostics["contextual_target_list_positions"] = torch.tensor(targets)
            tgt_C = torch.tensor(targets, dtype=torch.long, device=x_TND.device)
            rest_TMD = torch.gather(x_TND, 1, rest_TM[..., None].expand(T, M, D))
            Kd = keys_TNK.shape[-1]
            keys_TMK = torch.gather(keys_TNK, 1, rest_TM[..., None].expand(T, M, Kd))
            keys_TMK = keys_TMK / keys_TMK.norm(dim=-1, keepdim=True)
            is_target_M = torch.zeros(M, dtype=torch.bool, device=x_TND.device)
            is_target_M[tgt_C] = True
            others_O = torch.nonzero(~is_target_M)[:, 0]
            sim_TOC = keys_TMK[:, others_O] @ keys_TMK[:, tgt_C].transpose(1, 2)
            onehot_TOC = F.one_hot(sim_TOC.argmax(dim=-1), c).to(x_TND.dtype)
            counts_TC1 = onehot_TOC.sum(dim=1).clamp(min=1)[..., None]
            mean_TCD = onehot_TOC.transpose(1, 2) @ rest_TMD[:, others_O] / counts_TC1
            parts_feat.append(rest_TMD[:, tgt_C] + mean_TCD)
            parts_pos.append(rest_TM[:, tgt_C])
            kinds += [KIND_MERGED] * c

        features_TSD = torch.cat(parts_feat, dim=1)
        position_TS = torch.cat(parts_pos, dim=1)
        frame_TS = torch.arange(T, device=x_TND.device)[:, None].expand(T, S)
        kind_TS = torch.tensor(kinds, dtype=torch.long, device=x_TND.device)[None].expand(T, S)
        return PrunerOutput(
            features_TSD.reshape(T * S, D),
            frame_TS.reshape(-1).clone(),
            position_TS.reshape(-1).clone(),
            kind_TS.reshape(-1).clone(),
            diagnostics,
        )


class StopVisionZipPruner(VisionZipPruner):
    """SToP + VisionZip: dominant tokens by STSP ranking ``A - mu_s * s``.

    sink_target_shift (reference quirk ``stop_visionzip_sink_target_shift``, default True as in the
        SToP code, active even at mu_s = 0): each contextual target *list position* is incremented
        while it is among the ``sink_top`` sink *grid positions* (mismatched index spaces,
        reproduced literally). With a small target stride (large budgets) a shifted target can
        land on the next one, so two contextual tokens share a position, as in the reference.
        False gives the clean VisionZip targets.
    """

    name = "stop_visionzip"

    def __init__(
        self,
        budget_per_frame: int = 20,
        dominant_ratio: float = DOMINANT_RATIO,
        mu_s: float = 0.03,
        gamma: float = DEFAULT_GAMMA,
        sink_top: int = 20,
        sink_target_shift: bool = True,
    ) -> None:
        super().__init__(budget_per_frame, dominant_ratio)
        self.mu_s = float(mu_s)
        self.gamma = float(gamma)
        self.sink_top = int(sink_top)
        self.sink_target_shift = bool(sink_target_shift)

    def _ranking_TN(self, attention_TN: Tensor, diagnostics: dict[str, Tensor]) -> Tensor:
        sink_N = sink_score_N(attention_TN, self.gamma)
        diagnostics["sink_score_N"] = sink_N
        return stsp_ranking_TN(attention_TN, sink_N, self.mu_s)

    def _targets(self, M: int, c: int, diagnostics: dict[str, Tensor]) -> list[int]:
        targets = super()._targets(M, c, diagnostics)
        if not self.sink_target_shift:
            return targets
        sinks = top_sink_positions(diagnostics["sink_score_N"], self.sink_top)
        shifted = []
        for t in targets:
            while t in sinks and t < M:
                t += 1
            if t >= M:
                raise LayoutError(
                    f"stop_visionzip: the sink target shift ran contextual target {t} off the "
                    f"{M}-token list (the reference would index out of range); lower sink_top or "
                    "set sink_target_shift=False"
                )
            shifted.append(t)
        return shifted
