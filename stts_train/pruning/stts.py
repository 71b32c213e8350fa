"""STTS: spatio-temporal token scoring (docs/stts.md#scorer to #aux-loss, choices: #decisions).

Shape legend (AGENTS.md#shape-legend): F frames (flat, item after item), T frames of one video,
N patches per frame, D ViT width (the head dim right after H), H heads, G groups per frame
(pool x pool windows of patches), P patches per group, X flattened rows (the F * G groups in the
pooler, the G * P patch slots of a frame in `group_to_patch`).

Pieces, tensor functions each usable on its own (the conformance runner checks them against the
goldens); the scores (F, G) they take come from the learned scorer, which is model code
(`stts_train/models/stts_scorer.py`):
- `group_index`: the (G, P) table of patch indices of every group;
- `select_groups`: one global top-k per video (lowest scores pruned, frame 0 protected,
  stable tie-break by flat index);
- `soft_bias`: min-max rescaled scores -> ln(s_hat) in [-2, 0] key bias for block prune_at+1;
- `temporal_aux_loss`: coefficient * MSE(s, 1 - cos(prev, cur)) over prunable non-first frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stts_train.constants import Modality
from stts_train.pruning.budget import pruned_groups


def group_index(grid: int, pool: int, device: torch.device | None = None) -> torch.Tensor:
    """(G, P) patch indices of each pool x pool group, groups and patches both in raster order."""
    if grid % pool:
        raise ValueError(f"patch grid {grid}x{grid} is not divisible by the pool size {pool}")
    groups_per_side = grid // pool
    gr = torch.arange(groups_per_side, device=device).view(-1, 1, 1, 1)
    gc = torch.arange(groups_per_side, device=device).view(1, -1, 1, 1)
    dh = torch.arange(pool, device=device).view(1, 1, -1, 1)
    dw = torch.arange(pool, device=device).view(1, 1, 1, -1)
    index = (pool * gr + dh) * grid + (pool * gc + dw)
    return index.reshape(groups_per_side**2, pool * pool)


@dataclass
class FrameLayout:
    """Per-frame bookkeeping derived from the items of a micro-batch.

    `video_spans` lists (first flat frame, number of frames, pruned-group budget) for every
    prunable video; every other frame (images, budget-0 videos, padding) is not prunable.
    """

    num_frames: int
    prunable_F: torch.Tensor
    """(F,) bool: frame belongs to a video with budget > 0."""
    first_frame_F: torch.Tensor
    """(F,) bool: first frame of its item (or the first padding frame of a row)."""
    video_spans: list[tuple[int, int, int]]

    @property
    def num_pruned(self) -> int:
        return sum(budget for _, _, budget in self.video_spans)


def layout_from_items(
    item_frames: list[int], item_modality: list[int], keep_ratio: float, groups_per_frame: int
) -> FrameLayout:
    """Layout for the model: videos pruned with the exact budget of `pruning.budget`."""
    budgets = [
        pruned_groups(groups_per_frame, n, keep_ratio) if m == Modality.VIDEO else 0
        for n, m in zip(item_frames, item_modality)
    ]
    return layout_from_budgets(item_frames, budgets)


def layout_from_budgets(item_frames: list[int], budgets: list[int], device=None) -> FrameLayout:
    """Layout from explicit per-item budgets (items are consecutive runs of frames)."""
    total = sum(item_frames)
    prunable = torch.zeros(total, dtype=torch.bool, device=device)
    first = torch.zeros(total, dtype=torch.bool, device=device)
    spans = []
    start = 0
    for n, budget in zip(item_frames, budgets):
        if n > 0:
            first[start] = True
            if budget > 0:
                prunable[start : start + n] = True
                spans.append((start, n, budget))
        start += n
    return FrameLayout(total, prunable, first, spans)


def select_groups(scores_FG: torch.Tensor, layout: FrameLayout) -> torch.Tensor:
    """Keep mask (F, G): per video, the `budget` lowest-scored groups over all its frames are
    pruned.

    Frame 0 of each video is protected (its scores treated as +inf); ties are broken by the flat
    (frame-major) index so the result is deterministic. Budgets are capped at G * (T - 1), so
    frame 0 is never pruned. Non-prunable frames keep everything.
    """
    num_groups = scores_FG.shape[1]
    keep_FG = torch.ones_like(scores_FG, dtype=torch.bool)
    with torch.no_grad():
        for start, length, budget in layout.video_spans:
            budget = min(budget, num_groups * (length - 1))
            if budget <= 0:
                continue
            video_scores = scores_FG[start : start + length].detach().clone()
            video_scores[0] = float("inf")
            order = torch.sort(video_scores.reshape(-1), stable=True).indices
            video_keep = torch.ones(length * num_groups, dtype=torch.bool, device=scores_FG.device)
            video_keep[order[:budget]] = False
            keep_FG[start : start + length] = video_keep.view(length, num_groups)
    return keep_FG


def soft_bias(
    scores_FG: torch.Tensor,
    layout: FrameLayout,
    *,
    groups_per_side: int,
    axis: str = "row",
    min_value: float = math.exp(-2.0),
) -> torch.Tensor:
    """Per-group key bias ln(s_hat) (F, G) for block prune_at+1, differentiable in the scores.

    s_hat = m + (s - min) * (1 - m) / (max - min + 1e-6), min/max over each group row ("row",
    the reference's per-patch-row rescale) or over the frame ("frame"); s_hat = 1 (bias 0, no
    gradient) on each video's first frame and on every non-prunable frame.
    """
    num_frames, num_groups = scores_FG.shape
    apply_F = layout.prunable_F & ~layout.first_frame_F
    bias_FG = scores_FG.new_zeros(num_frames, num_groups)
    if not bool(apply_F.any()):
        return bias_FG
    s = scores_FG[apply_F].view(-1, groups_per_side, groups_per_side)
    if axis == "row":
        lo = s.amin(dim=-1, keepdim=True)
        hi = s.amax(dim=-1, keepdim=True)
    elif axis == "frame":
        lo = s.amin(dim=(-2, -1), keepdim=True)
        hi = s.amax(dim=(-2, -1), keepdim=True)
    else:
        raise ValueError(f"rescale axis {axis!r} must be 'row' or 'frame'")
    s_hat = min_value + (s - lo) * (1.0 - min_value) / (hi - lo + 1e-6)
    bias_FG = bias_FG.masked_scatter(
        apply_F[:, None].expand_as(bias_FG), torch.log(s_hat).reshape(-1)
    )
    return bias_FG


def group_to_patch(
    values_FG: torch.Tensor, group_index_GP: torch.Tensor, num_patches: int
) -> torch.Tensor:
    """Spread a per-group value to the group's patches: (F, G) -> (F, N)."""
    num_frames, _ = values_FG.shape
    out = (
        values_FG.new_zeros(num_frames, num_patches)
        if values_FG.dtype != torch.bool
        else torch.zeros(num_frames, num_patches, dtype=torch.bool, device=values_FG.device)
    )
    patches_per_group = group_index_GP.shape[1]
    index_FX = group_index_GP.reshape(1, -1).expand(num_frames, -1)
    src_FX = values_FG.repeat_interleave(patches_per_group, dim=1)
    return out.scatter(1, index_FX, src_FX)


def neighbor_cosine(hidden_TND: torch.Tensor, group_index_GP: torch.Tensor) -> torch.Tensor:
    """(T-1, G) cosine between the same group in consecutive frames (groups = P concatenated
    patches)."""
    num_frames, _, dim = hidden_TND.shape
    num_groups, patches_per_group = group_index_GP.shape
    g = hidden_TND[:, group_index_GP.reshape(-1)].reshape(
        num_frames, num_groups, patches_per_group * dim
    )
    g = F.normalize(g, dim=-1, eps=1e-12)
    return (g[:-1] * g[1:]).sum(dim=-1)


def temporal_aux_loss(
    hidden_FND: torch.Tensor,
    scores_FG: torch.Tensor,
    layout: FrameLayout,
    group_index_GP: torch.Tensor,
    *,
    coefficient: float = 0.5,
    detach_target: bool = False,
) -> torch.Tensor:
    """coefficient * sum_f>=1 (s[f] - (1 - cos(g[f-1], g[f])))^2 / max(1, G * #frames), per video.

    Only neighbouring frames of the same prunable video are compared (no cross-video pairs); the
    target is not detached unless asked (the reference trains blocks <= prune_at through it).
    """
    num_groups = scores_FG.shape[1]
    total = scores_FG.new_zeros(())
    count = 0
    for start, length, _ in layout.video_spans:
        if length < 2:
            continue
        target = 1.0 - neighbor_cosine(hidden_FND[start : start + length], group_index_GP)
        if detach_target:
            target = target.detach()
        frame_mask = layout.prunable_F[start + 1 : start + length].to(scores_FG.dtype)[:, None]
        diff = scores_FG[start + 1 : start + length] - target
        total = total + (frame_mask * diff.pow(2)).sum()
        count += int(frame_mask.sum().item()) * num_groups
    return coefficient * total / max(1, count)
