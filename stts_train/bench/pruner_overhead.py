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
    rows: int,
    cols: int,
    dim: int,
    *,
    seed: int = 0,
    static_fraction: float = 0.5,
    motion: float = 0.02,
    key_dim: int = 8,
    global_dim: int | None = 12,
    **kw,
) -> PrunerInput:
    """One synthetic video at the pruning point (see the module docstring); also the pruner
    tests' input.

    A `static_fraction` share of the rows x cols positions moves by only `motion` (relative) from
    frame to frame; attention values are distinct on the 1/729 scale. Global features are random
    (`global_dim` values per frame) or, with `global_dim=None`, the frame's mean feature. `kw`
    goes to `PrunerInput` (generator, keep_ratio, ...).
    """
    g = torch.Generator().manual_seed(seed)
    n = rows * cols
    base_ND = torch.randn(n, dim, generator=g)
    moving_TND = torch.randn(num_frames, n, dim, generator=g)
    static_N = torch.rand(n, generator=g) < static_fraction
    x_TND = torch.where(static_N[None, :, None], base_ND + motion * moving_TND, moving_TND)
    attention_TN = torch.softmax(torch.randn(num_frames, n, generator=g), dim=-1) * (n / 729)
    keys_TNK = torch.randn(num_frames, n, key_dim, generator=g)
    if global_dim is None:
        global_TG = x_TND.mean(dim=1)
    else:
        global_TG = torch.randn(num_frames, global_dim, generator=g)
    return PrunerInput(
        x_TND, attention_TN, Grid(rows, cols), keys_TNK=keys_TNK, global_features_TG=global_TG, **kw
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
    side = math.isqrt(n)
    rows = side if side * (n // side) == n else 1  # square-ish grid, else one row
    results: dict[str, float] = {}
    for name in names:
        pruner = get_pruner(name)
        times = []
        for i in range(warmup + repeats):
            video = synthetic_video(
                num_frames,
                rows,
                n // rows,
                dim,
                seed=i,
                motion=0.05,
                key_dim=72,
                global_dim=None,
                generator=torch.Generator().manual_seed(i + 1),
                keep_ratio=keep_ratio,
            )
            start = time.perf_counter()
            pruner(video)
            elapsed = time.perf_counter() - start
            if i >= warmup:
                times.append(elapsed * 1e3)
        results[name] = statistics.median(times)
    return results
