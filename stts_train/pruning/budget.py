"""Exact STTS budgets (docs/stts.md#budget): pruned groups per video = floor(G * rho * T)
with rho = 1 - keep_ratio, in rational arithmetic so a product never lands just below an integer."""

from __future__ import annotations

from fractions import Fraction

from stts_train.errors import LayoutError


def exact_ratio(ratio: float) -> Fraction:
    """The decimal a user typed (0.7 -> 7/10), not the nearest binary float's expansion."""
    return Fraction(repr(float(ratio)))


def pruned_groups(num_groups: int, num_frames: int, keep_ratio: float) -> int:
    """Groups a video of `num_frames` frames loses: floor(G * (1 - keep_ratio) * T).

    Frame 0 is never pruned, so the budget is capped at G * (T - 1). Pruning a one-frame video
    is an error: the data pipeline labels one-frame videos as images.
    """
    if not 0.0 < keep_ratio <= 1.0:
        raise LayoutError(f"keep_ratio={keep_ratio} must be in (0, 1]")
    if num_frames < 1:
        raise LayoutError(f"a video needs at least one frame, found {num_frames}")
    rho = 1 - exact_ratio(keep_ratio)
    budget = (num_groups * num_frames * rho.numerator) // rho.denominator
    if budget > 0 and num_frames == 1:
        raise LayoutError(
            "cannot prune a one-frame video (frame 0 is always kept); send it as an image "
            "(modality 1) or use keep_ratio=1.0"
        )
    return min(budget, num_groups * (num_frames - 1))


def kept_groups(num_groups: int, num_frames: int, keep_ratio: float) -> int:
    """Groups (= LLM image tokens) a video keeps."""
    return num_groups * num_frames - pruned_groups(num_groups, num_frames, keep_ratio)
