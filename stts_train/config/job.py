"""The whole job config tree and how it is loaded from a YAML file plus overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stts_train.config.base import apply_overrides, from_dict, read_yaml_with_bases, to_dict
from stts_train.config.cluster import ClusterConfig
from stts_train.config.data import DataConfig
from stts_train.config.engine import (
    CheckpointConfig,
    MetricsConfig,
    OptimConfig,
    ParallelConfig,
    TrainConfig,
)
from stts_train.config.hf_checkpoint import apply_checkpoint_architecture
from stts_train.config.model import ModelConfig
from stts_train.config.packing import PackingConfig


@dataclass(kw_only=True)
class JobConfig:
    name: str = "run"
    """Run name; defaults to the config file's stem."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    packing: PackingConfig = field(default_factory=PackingConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @property
    def run_dir(self) -> str:
        return self.train.run_dir or str(Path("runs") / self.name)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
    """Load a config file (with its `base:` chain) and dotted overrides into a validated
    JobConfig."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        data = read_yaml_with_bases(path)
        source = str(path)
        data.setdefault("name", Path(path).stem)
    if overrides:
        data = apply_overrides(data, list(overrides))
        source = f"{source} (with overrides {' '.join(overrides)})"
    return config_from_dict(data, source)


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> JobConfig:
    """A validated JobConfig; with `model.hf_checkpoint`, the model shape comes from it."""
    return from_dict(JobConfig, apply_checkpoint_architecture(data, source), source=source)


def dump_config(cfg: JobConfig) -> str:
    """Resolved config as YAML (what goes into run dirs and checkpoints; holds no credentials)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
