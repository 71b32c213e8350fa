"""Cluster submission config (issue 6)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(kw_only=True)
class SlurmConfig:
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem: str = ""
    time: str = "01:00:00"
    partition: str = ""
    account: str = ""
    qos: str = ""
    signal_grace_s: int = 120
    max_requeues: int = 3
    env: dict[str, str] = field(default_factory=dict)


@dataclass(kw_only=True)
class RayClusterConfig:
    address: str = ""
    num_workers: int = 1


@dataclass(kw_only=True)
class ClusterConfig:
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    ray: RayClusterConfig = field(default_factory=RayClusterConfig)
