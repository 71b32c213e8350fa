"""Shared fixtures-as-functions for the pruner tests (synthetic videos, golden location)."""

from __future__ import annotations

from pathlib import Path

from stts_train.bench.pruner_overhead import synthetic_video
from stts_train.pruning.base import PrunerInput

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
    attention values on the 1/729 scale (`stts_train/bench/pruner_overhead.py`)."""
    return synthetic_video(T, rows, cols, D, seed=seed, static_fraction=static_fraction, **kw)
