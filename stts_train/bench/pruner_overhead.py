"""Per-video wall time of every training-free pruner (called by ``stts-train bench step``).

    measure_pruner_overhead(num_frames=64, n=81, dim=2560) -> {"visionzip": 3.1, ...}  (ms/video)

Inputs are synthetic but shaped like the real pruning point: features with a static half (so the
temporal methods find static tokens), attention on the 1/729 scale of a received-attention map,
head-averaged keys (VisionZip) and per-frame global features (FastVID). Each pruner runs
``warmup`` times untimed, then ``repeats`` timed; the median is reported. Single process, current
torch thread settings, CPU tensors.
"""

from __future__ import annotations

import math
import statistics
import time

import torch

from stts_train.pruning.base import Grid, PrunerInput, available_pruners, get_pruner

MODEL_INTERNAL = {"stts"}


def synthetic_video(
    num_frames: int,
    n: int,
    dim: int,
    key_dim: int = 72,
    seed: int = 0,
    keep_ratio: float | None = None,
) -> PrunerInput:
    """One synthetic video at the pruning point (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    side = math.isqrt(n)
    grid = Grid(side, n // side) if side * (n // side) == n else Grid(1, n)
    base_ND = torch.randn(n, dim, generator=g)
    moving_TND = torch.randn(num_frames, n, dim, generator=g)
    static_N = torch.rand(n, generator=g) < 0.5
    x_TND = torch.where(static_N[None, :, None], base_ND + 0.05 * moving_TND, moving_TND)
    logits_TN = torch.randn(num_frames, n, generator=g)
    attention_TN = torch.softmax(logits_TN, dim=-1) * (n / 729)
    keys_TNK = torch.randn(num_frames, n, key_dim, generator=g)
    return PrunerInput(
        features_TND=x_TND,
        attention_TN=attention_TN,
        grid=grid,
        keys_TNK=keys_TNK,
        global_features_TG=x_TND.mean(dim=1),
        generator=torch.Generator().manual_seed(seed + 1),
        keep_ratio=keep_ratio,
    )


def measure_pruner_overhead(
    num_frames: int = 64,
    n: int = 81,
    dim: int = 2560,
    repeats: int = 5,
    warmup: int = 1,
    keep_ratio: float = 0.5,
    names: list[str] | None = None,
) -> dict[str, float]:
    """Median milliseconds per video for each pruner (all registry names but model-internal)."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be >= 1")
    names = names or [x for x in available_pruners() if x not in MODEL_INTERNAL]
    results: dict[str, float] = {}
    for name in names:
        pruner = get_pruner(name)
        times = []
        for i in range(warmup + repeats):
            video = synthetic_video(num_frames, n, dim, seed=i, keep_ratio=keep_ratio)
            start = time.perf_counter()
            pruner(video)
            elapsed = time.perf_counter() - start
            if i >= warmup:
                times.append(elapsed * 1e3)
        results[name] = statistics.median(times)
    return results
