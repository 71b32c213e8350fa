"""Cluster submission config: where `stts-train submit` runs the training entry point.

`cluster.kind` picks the backend (`local`, `slurm`, `ray`); the `slurm` and `ray` sections hold
each backend's resources. `cluster.env` is exported to every rank on every backend (NCCL and
thread settings, for example). Command-line flags of `stts-train submit` (`--nodes`, `--time`,
`--address`, ...) are applied as overrides of these keys, so `--dry-run` shows their effect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from stts_train.config.base import check

DEFAULT_ENTRY = ("stts-train", "train")
"""The training entry point each rank runs, followed by the config path and overrides."""


@dataclass(kw_only=True)
class SlurmConfig:
    nodes: int = 1
    gpus_per_node: int = 0
    """GPUs requested per node; one rank per GPU when > 0."""
    cpus_per_task: int = 1
    """CPU cores per rank (per srun task)."""
    ntasks_per_node: int = 0
    """Ranks per node; 0 = gpus_per_node when GPUs are requested, else parallel.num_ranks /
    nodes."""
    mem: str = ""
    """Memory per node as sbatch takes it (`64G`); "" = the partition's default."""
    time: str = "01:00:00"
    partition: str = ""
    account: str = ""
    qos: str = ""
    signal_grace_s: int = 120
    """Slurm sends SIGUSR1 this many seconds before the time limit (`--signal=B:USR1@N`)."""
    max_requeues: int = 3
    """How often a preempted job requeues itself before it stops and exits with the preempted
    code."""
    master_port: int = 0
    """Rendezvous port; 0 = 20000 + job id % 20000 (distinct for jobs sharing a node)."""
    log_dir: str = ""
    """Where sbatch writes `<job name>-<job id>.out`; "" = <run dir>/slurm."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment for Slurm jobs only (merged over cluster.env)."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run in the batch script before srun (`module load ...`,
    `source venv/bin/activate`)."""
    extra_sbatch: list[str] = field(default_factory=list)
    """Additional `#SBATCH` options, e.g. `--constraint=h100` or `--exclusive`."""
    srun_args: list[str] = field(default_factory=list)
    """Additional srun options, e.g. `--cpu-bind=cores`."""

    def __post_init__(self) -> None:
        check(self.nodes >= 1, f"cluster.slurm.nodes={self.nodes} must be >= 1")
        check(
            self.gpus_per_node >= 0,
            f"cluster.slurm.gpus_per_node={self.gpus_per_node} must be >= 0",
        )
        check(
            self.cpus_per_task >= 1,
            f"cluster.slurm.cpus_per_task={self.cpus_per_task} must be >= 1",
        )
        check(
            self.ntasks_per_node >= 0,
            f"cluster.slurm.ntasks_per_node={self.ntasks_per_node} must be >= 0 (0 = derive it)",
        )
        check(
            self.signal_grace_s >= 1,
            f"cluster.slurm.signal_grace_s={self.signal_grace_s} must be >= 1 second",
        )
        check(
            self.max_requeues >= 0, f"cluster.slurm.max_requeues={self.max_requeues} must be >= 0"
        )
        check(
            0 <= self.master_port < 65536,
            f"cluster.slurm.master_port={self.master_port} must be in [0, 65535] (0 = derive from "
            "job id)",
        )
        for line in self.extra_sbatch:
            check(
                line.startswith("--"),
                f"cluster.slurm.extra_sbatch entry {line!r} must be a long option such as "
                "--exclusive",
            )


@dataclass(kw_only=True)
class RayClusterConfig:
    address: str = ""
    """Ray dashboard / Jobs API address, e.g. `http://127.0.0.1:8265`."""
    num_workers: int = 0
    """Ranks, one Ray actor each; 0 = parallel.num_ranks."""
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    working_dir: str = "."
    """Uploaded as the job's working directory (the project checkout)."""
    excludes: list[str] = field(
        default_factory=lambda: [
            ".git",
            "runs",
            "**/__pycache__",
            "*.egg-info",
            ".venv",
            "bench/results",
        ]
    )
    pip: list[str] = field(default_factory=list)
    """Extra pip packages installed into the job's runtime environment."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment for Ray jobs only (merged over cluster.env)."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    timeout_s: int = 0
    """Stop waiting for (and stop) the job after this many seconds; 0 = wait until it ends."""

    def __post_init__(self) -> None:
        check(self.num_workers >= 0, f"cluster.ray.num_workers={self.num_workers} must be >= 0")
        check(
            self.cpus_per_worker >= 0,
            f"cluster.ray.cpus_per_worker={self.cpus_per_worker} must be >= 0",
        )
        check(
            self.gpus_per_worker >= 0,
            f"cluster.ray.gpus_per_worker={self.gpus_per_worker} must be >= 0",
        )
        check(self.timeout_s >= 0, f"cluster.ray.timeout_s={self.timeout_s} must be >= 0")


@dataclass(kw_only=True)
class ClusterConfig:
    kind: Literal["local", "slurm", "ray"] = "local"
    """Default backend of `stts-train submit` (the `--cluster` flag overrides it)."""
    entry: list[str] = field(default_factory=list)
    """Command each rank runs before `CONFIG overrides...`; [] = `stts-train train`."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment for every rank on every backend (NCCL_*, OMP_NUM_THREADS, ...)."""
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    ray: RayClusterConfig = field(default_factory=RayClusterConfig)

    @property
    def entry_argv(self) -> list[str]:
        return list(self.entry) if self.entry else list(DEFAULT_ENTRY)
