"""Packing config: token budgets per micro-batch and the planner (owned by issue 3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from stts_train.config.base import check


@dataclass(kw_only=True)
class PackingConfig:
    algorithm: Literal["balanced", "pad_to_longest", "ffd", "knapsack"] = "balanced"
    max_llm_tokens: int = 4096
    """LLM sequence budget of one micro-batch (post-pruning tokens)."""
    max_vit_patches: int = 65536
    """ViT patch budget of one micro-batch (all patches entering block 0)."""
    window_size: int = 64
    """Samples the planner looks at at once."""

    def __post_init__(self) -> None:
        check(self.max_llm_tokens > 0, f"packing.max_llm_tokens={self.max_llm_tokens} must be > 0")
        check(self.max_vit_patches > 0, f"packing.max_vit_patches={self.max_vit_patches} must be > 0")
