"""Engine config: parallel layout, optimizer, training loop, checkpoints, metrics."""

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
    bucket_size: int = 50_000_000
    """ZeRO reduce/all-gather bucket size in elements."""

    def __post_init__(self) -> None:
        check(self.num_ranks >= 1, f"parallel.num_ranks={self.num_ranks} must be >= 1")
        check(
            self.tensor_parallel >= 1,
            f"parallel.tensor_parallel={self.tensor_parallel} must be >= 1",
        )


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
class SyntheticConfig:
    """Deterministic synthetic data (tests, benchmarks, CPU demos): everything is a function of
    (train.seed, global sample index)."""

    samples_per_microbatch: int = 2
    max_frames: int = 4
    """Frames of a synthetic video are drawn from [2, max_frames]."""
    min_text_tokens: int = 8
    max_text_tokens: int = 24
    modality_mix: tuple[float, float, float] = (0.5, 0.25, 0.25)
    """Probabilities of video, image and text-only samples."""
    fingerprint: str = "synthetic-v1"

    def __post_init__(self) -> None:
        check(
            self.samples_per_microbatch >= 1,
            f"train.synthetic.samples_per_microbatch={self.samples_per_microbatch} must be >= 1",
        )
        check(self.max_frames >= 2, f"train.synthetic.max_frames={self.max_frames} must be >= 2")
        check(
            1 <= self.min_text_tokens <= self.max_text_tokens,
            "train.synthetic needs 1 <= min_text_tokens <= max_text_tokens",
        )
        check(
            abs(sum(self.modality_mix) - 1.0) < 1e-6 and min(self.modality_mix) >= 0,
            f"train.synthetic.modality_mix={list(self.modality_mix)} must be >= 0 and sum to 1",
        )


@dataclass(kw_only=True)
class TrainConfig:
    num_steps: int = 100
    micro_batches_per_step: int = 1
    """Gradient accumulation: planner rows per rank per optimizer step."""
    seed: int = 0
    run_dir: str = ""
    """Run directory (checkpoints, metrics, resolved config); "" = runs/<config name>."""
    log_every: int = 1
    """Metrics are gathered from every rank and written (metrics.jsonl, samples.jsonl, wandb, the
    progress bar) every `log_every` steps, before every checkpoint and at the end; in between
    each rank buffers its numbers, so other steps run no metrics collective. Every step still
    gets its own row (`stts_train/train/metrics.py`)."""
    data_source: Literal["auto", "synthetic", "stream"] = "auto"
    """'synthetic' = deterministic random batches; 'stream' = data.path through the planner;
    'auto' = stream when data.path is set, else synthetic."""
    synthetic: SyntheticConfig = field(default_factory=lambda: SyntheticConfig())

    def __post_init__(self) -> None:
        check(self.num_steps >= 1, f"train.num_steps={self.num_steps} must be >= 1")
        check(
            self.log_every >= 1,
            f"train.log_every={self.log_every} must be >= 1 (1 = write metrics after every step)",
        )


@dataclass(kw_only=True)
class CheckpointConfig:
    every: int = 50
    keep_last: int = 3
    dir: str = ""
    """'' = <run_dir>/checkpoints; also accepts s3://bucket/prefix."""
    at_end: bool = True
    """Write a checkpoint after the last step."""
    resume: bool = True
    """Resume automatically from the checkpoint dir's `latest` pointer when it exists."""
    allow_dp_change: bool = False
    """Accept a checkpoint written with a different data-parallel size (the data stream restarts
    its per-rank state from the global sample position)."""
    allow_fingerprint_change: bool = False
    """Accept a checkpoint whose dataset fingerprint differs from the current data."""


@dataclass(kw_only=True)
class MetricsConfig:
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    wandb_project: str = "stts-train"
    jsonl: bool = True
    progress_bar: bool = True
    peak_flops_per_device: float = 0.0
    """For MFU; 0 = a built-in guess (H100 bf16 dense 989e12, CPU 1e11)."""
