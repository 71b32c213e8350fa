"""Packing config: token budgets per micro-batch and the balanced planner.

The planner (`stts_train.data.planner`) turns a window of streamed samples into, for every
data-parallel rank, the same number of packed rows (micro-batches). See that module for the
algorithm. The benchmark's baselines and streaming mode take their knobs from
`stts_train.bench.planners.PlannerOptions`, not from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from stts_train.config.base import check


@dataclass(kw_only=True)
class PackingConfig:
    max_llm_tokens: int = 4096
    """LLM sequence budget of one micro-batch (post-pruning tokens)."""
    max_vit_patches: int = 65536
    """ViT patch budget of one micro-batch (all patches entering block 0)."""
    window_size: int = 64
    """Samples each data-parallel rank reads per planner window (the window is all ranks'
    samples, planned whole)."""
    oversize: Literal["error"] = "error"
    """What happens to a sample larger than a budget: `error` raises `DataError` naming the
    sample and the budget to raise. Truncation is the data pipeline's job (`data.max_frames`)."""
    rows_per_rank: int | None = None
    """Micro-batches per rank per step; None = derived from the window so rows are about
    `target_fill` full."""
    target_fill: float = 0.9
    """Balanced planner: the row count is chosen so the mean row uses this fraction of the
    tighter budget (leaves room to balance)."""
    balance_tolerance: float = 0.002
    """Balanced planner: a row's modelled LLM and ViT cost may exceed the per-row target by this
    fraction (a sample that fits no row within it goes where the budgets allow)."""
    target_scale: float = 0.995
    """Balanced planner: per-row targets are this fraction of (window cost / rows), so rows fill
    to the target and the remainder levels them last instead of leaving some rows short."""
    prefer_home_rank: bool = True
    """Live training (several data-parallel ranks): a sample stays on the rank that decoded it
    whenever a row there fits it within the balance tolerance, so only the overflow of ranks
    holding more than their share moves (`stts-train bench packing`, keep 0.5, DP 8 / 64: 7% / 9%
    of ViT patches moved instead of 72% / 85%, imbalance p95 1.1% instead of 0.4% / 0.5%).
    False: balance first, then relabel ranks and swap equal samples to save transfers."""
    seed: int = 0
    """Tie-breaking and row-to-rank order of the planner (same seed, same plan)."""

    def __post_init__(self) -> None:
        check(self.max_llm_tokens > 0, f"packing.max_llm_tokens={self.max_llm_tokens} must be > 0")
        check(
            self.max_vit_patches > 0, f"packing.max_vit_patches={self.max_vit_patches} must be > 0"
        )
        check(self.window_size > 0, f"packing.window_size={self.window_size} must be > 0")
        check(
            self.rows_per_rank is None or self.rows_per_rank > 0,
            f"packing.rows_per_rank={self.rows_per_rank} must be > 0 (or null to derive it)",
        )
        check(
            0.0 < self.target_fill <= 1.0,
            f"packing.target_fill={self.target_fill} must be in (0, 1]",
        )
        check(
            0.0 <= self.balance_tolerance < 1.0,
            f"packing.balance_tolerance={self.balance_tolerance} must be in [0, 1)",
        )
        check(
            0.5 <= self.target_scale <= 1.0,
            f"packing.target_scale={self.target_scale} must be in [0.5, 1]",
        )
