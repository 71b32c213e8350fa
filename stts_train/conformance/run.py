"""Run every golden suite under a directory (what `stts-train conformance DIR` runs).

DIR is a golden root holding `stts/` and/or `pruners/`, or one of those folders itself (an STTS
folder is recognised by its component sub-folders).
"""

from __future__ import annotations

from pathlib import Path

from stts_train.conformance.common import CaseResult
from stts_train.errors import DataError

STTS_COMPONENTS = {"scorer", "selection", "soft_bias", "aux_loss", "vit_forward"}


def golden_suites(root: Path) -> list[tuple[str, Path]]:
    """(suite name, folder) pairs under `root`: suite is "stts" or "pruners"."""
    children = {c.name for c in root.iterdir() if c.is_dir()}
    if children & STTS_COMPONENTS:
        return [("stts", root)]
    suites = []
    if (root / "stts").is_dir():
        suites.append(("stts", root / "stts"))
    if (root / "pruners").is_dir():
        suites.append(("pruners", root / "pruners"))
    return suites or [("pruners", root)]


def run_goldens(root: str | Path) -> list[CaseResult]:
    """Every case of every suite under `root`, in suite then case order."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"golden directory {root} does not exist; pass a folder holding stts/ and/or pruners/"
            " golden cases (or one of those folders)"
        )
    results: list[CaseResult] = []
    for suite, path in golden_suites(root):
        if suite == "stts":
            from stts_train.conformance.stts import run_stts_goldens as runner
        else:
            from stts_train.conformance.pruners import run_pruner_goldens as runner
        results.extend(runner(path))
    return results
