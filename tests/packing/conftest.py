"""Shared fixtures for the packing tests: the tiny model config and the sample builder."""

from __future__ import annotations

from pathlib import Path

import pytest

from stts_train.config import load_config
from stts_train.config.model import ModelConfig
from stts_train.data.builders import make_sample as build_sample


@pytest.fixture(scope="session")
def tiny_model_cfg() -> ModelConfig:
    return load_config(Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml").model


@pytest.fixture
def make_sample():
    """`make_sample(cfg, key, items, prompt, answer, seed)` (`stts_train/data/builders.py`)."""
    return build_sample
