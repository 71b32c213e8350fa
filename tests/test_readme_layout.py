"""README's "Layout" section lists every package of the tree, and only paths that exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _listed_paths() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Layout", 1)[1]
    block = section.split("```", 2)[1]
    return [line.split()[0] for line in block.strip().splitlines() if line.strip()]


def test_every_listed_path_exists():
    missing = [p for p in _listed_paths() if not (REPO / p).exists()]
    assert not missing, f"README Layout names paths that do not exist: {missing}"


def test_every_package_is_listed():
    listed = {p.rstrip("/") for p in _listed_paths()}
    packages = {
        str(d.relative_to(REPO))
        for d in (REPO / "stts_train").iterdir()
        if d.is_dir() and (d / "__init__.py").is_file()
    }
    top = {"pipelines", "cluster", "configs", "docs", "tests"}
    unlisted = sorted((packages | top) - listed)
    assert not unlisted, f"README Layout does not describe: {unlisted}"
    assert all(re.fullmatch(r"[\w./-]+", p) for p in listed)
