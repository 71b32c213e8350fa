"""Random pruning baseline (docs/pruners.md#random; STTS's random ablation).

Per frame keep R = floor(N * keep_ratio) positions drawn without replacement, in ascending order;
with ``per_video_total=True`` the video instead keeps T * R tokens drawn over all T * N (frames may
then keep different counts). Output sorted by (frame, position), all kind 0.

Draws come from ``PrunerInput.generator`` (one per video), else from a fresh generator seeded with
``seed``: never from the global RNG, so a video's result does not depend on its batch neighbours.
Budgets are exact (rational arithmetic on the typed ratio, no float product).

Legend (AGENTS.md#shape-legend): T frames, N tokens per frame, D feature width, M kept per video;
local here: R kept per frame.
"""

from __future__ import annotations

import torch

from stts_train.errors import ConfigError
from stts_train.pruning.base import KIND_COPY, PrunerBase, PrunerInput, PrunerOutput
from stts_train.pruning.budget import exact_ratio


def exact_floor(count: int, ratio: float) -> int:
    """floor(count * ratio) with the ratio read as the decimal the user typed."""
    q = exact_ratio(ratio)
    return (count * q.numerator) // q.denominator


class RandomPruner(PrunerBase):
    name = "random"

    def __init__(
        self, retain_ratio: float = 0.5, per_video_total: bool = False, seed: int = 0
    ) -> None:
        if not 0.0 < retain_ratio <= 1.0:
            raise ConfigError(f"random.retain_ratio={retain_ratio} must be in (0, 1]")
        self.retain_ratio = float(retain_ratio)
        self.per_video_total = bool(per_video_total)
        self.seed = int(seed)

    def prune(self, video: PrunerInput) -> PrunerOutput:
        x_TND = video.features_TND
        T, N, _ = x_TND.shape
        r = self.retain_ratio if video.keep_ratio is None else video.keep_ratio
        R = exact_floor(N, r)
        g = (
            video.generator
            if video.generator is not None
            else torch.Generator().manual_seed(self.seed)
        )
        if self.per_video_total:
            u = torch.rand(T * N, generator=g)
            flat_M = torch.topk(u, T * R).indices.sort().values.to(x_TND.device)
        else:
            u_TN = torch.rand((T, N), generator=g)
            pos_TR = torch.topk(u_TN, R, dim=1).indices.sort(dim=1).values
            flat_M = (torch.arange(T)[:, None] * N + pos_TR).reshape(-1).to(x_TND.device)
        frame_M, position_M = flat_M // N, flat_M % N
        return PrunerOutput(
            x_TND[frame_M, position_M],
            frame_M,
            position_M,
            torch.full_like(flat_M, KIND_COPY),
        )
