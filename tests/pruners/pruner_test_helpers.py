"""Shared fixtures-as-functions for the pruner tests (synthetic videos, golden location)."""

from __future__ import annotations

from pathlib import Path

import torch

from stts_train.pruning.base import Grid, PrunerInput

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
PRUNER_GOLDENS = SHARED / "golden" / "pruners"


def pruner_golden_dir() -> Path:
    """The shared pruner goldens; a missing folder is a broken checkout, never a skip."""
    if not (PRUNER_GOLDENS / "README.md").is_file():
        raise FileNotFoundError(
            f"pruner goldens not found at {PRUNER_GOLDENS}; the 'shared' folder must sit beside "
            "the repository root (CI checks it out there)"
        )
    return PRUNER_GOLDENS


def video(
    T: int = 8,
    rows: int = 14,
    cols: int = 14,
    D: int = 16,
    seed: int = 0,
    static_fraction: float = 0.5,
    **kw,
) -> PrunerInput:
    """A synthetic video: a static share of positions barely changes over time; distinct
    attention values on the 1/729 scale."""
    g = torch.Generator().manual_seed(seed)
    N = rows * cols
    base_ND = torch.randn(N, D, generator=g)
    move_TND = torch.randn(T, N, D, generator=g)
    static_N = torch.rand(N, generator=g) < static_fraction
    x_TND = torch.where(static_N[None, :, None], base_ND + 0.02 * move_TND, move_TND)
    attention_TN = torch.softmax(torch.randn(T, N, generator=g), dim=-1) * (N / 729)
    keys_TNK = torch.randn(T, N, 8, generator=g)
    gfeat_TG = torch.randn(T, 12, generator=g)
    return PrunerInput(
        x_TND, attention_TN, Grid(rows, cols), keys_TNK=keys_TNK, global_features_TG=gfeat_TG, **kw
    )
