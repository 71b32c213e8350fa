"""Engine config: parallel layout, optimizer, training loop, checkpoints, metrics (issue 4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from stts_train.config.base import check


@dataclass(kw_only=True)
class ParallelConfig:
    num_ranks: int = 1
    """Local processes `stts-train train` launches when no launcher is present."""
    tensor_parallel: int = 1
    zero_stage: Literal[0, 1, 2, 3] = 1
    precision: Literal["fp32", "bf16"] = "fp32"
    backend: Literal["auto", "gloo", "nccl"] = "auto"

    def __post_init__(self) -> None:
        check(self.num_ranks >= 1, f"parallel.num_ranks={self.num_ranks} must be >= 1")
        check(self.tensor_parallel >= 1, f"parallel.tensor_parallel={self.tensor_parallel} must be >= 1")


@dataclass(kw_only=True)
class GroupLr:
    lr: float
    warmup_steps: int = 200


@dataclass(kw_only=True)
class OptimConfig:
    vit: GroupLr = field(default_factory=lambda: GroupLr(lr=5e-6))
    connector: GroupLr = field(default_factory=lambda: GroupLr(lr=5e-6))
    llm: GroupLr = field(default_factory=lambda: GroupLr(lr=1e-5))
    scorer: GroupLr = field(default_factory=lambda: GroupLr(lr=1e-4))
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-6
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    final_lr_fraction: float = 0.1
    """Cosine decay ends at this fraction of each group's peak LR."""


@dataclass(kw_only=True)
class TrainConfig:
    num_steps: int = 100
    micro_batches_per_step: int = 1
    """Gradient accumulation: planner rows per rank per optimizer step."""
    seed: int = 0
    run_dir: str = ""
    """Run directory (checkpoints, metrics, resolved config); "" = runs/<config name>."""
    log_every: int = 1

    def __post_init__(self) -> None:
        check(self.num_steps >= 1, f"train.num_steps={self.num_steps} must be >= 1")


@dataclass(kw_only=True)
class CheckpointConfig:
    every: int = 50
    keep_last: int = 3
    dir: str = ""
    """'' = <run_dir>/checkpoints; also accepts s3://bucket/prefix."""


@dataclass(kw_only=True)
class MetricsConfig:
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    wandb_project: str = "stts-train"
    jsonl: bool = True
