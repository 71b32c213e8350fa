"""Submit one training job to a backend, or show what would be submitted (`stts-train submit`).

Backends: `local` (the entry point on this machine, in the foreground), `slurm` (a rendered
cluster/templates/train.sbatch through sbatch) and `ray` (the Ray Jobs API; the config with its
`base:` chain resolved travels in the job). Progress lines go to stdout as the job is handed
over; a followed Ray job streams its logs until it ends.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from stts_train.config import dump_config

BACKENDS = ("local", "slurm", "ray")


def _ray_config_yaml(config_path: Path) -> str:
    """The experiment YAML with its `base:` chain resolved (and a name) for the Ray job."""
    import yaml

    from stts_train.config.base import read_yaml_with_bases

    data = read_yaml_with_bases(config_path)
    data.setdefault("name", config_path.stem)
    return yaml.safe_dump(data, sort_keys=False)


def dry_run(cfg: Any, config_path: Path, overrides: list[str], kind: str) -> str:
    """What `submit` would hand to `kind` (argv, sbatch script or Ray spec), then the resolved
    config."""
    if kind == "local":
        from cluster import local

        what = " ".join(shlex.quote(a) for a in local.command(cfg, config_path, overrides)) + "\n"
    elif kind == "slurm":
        from cluster import slurm

        what = slurm.render_script(cfg, config_path, overrides) + "\n"
    else:
        import yaml

        from cluster import ray_jobs

        spec = ray_jobs.build_spec(cfg, _ray_config_yaml(config_path), overrides)
        what = (
            f"address: {cfg.cluster.ray.address or '(none)'}\n"
            f"entrypoint: {ray_jobs.DRIVER_ENTRYPOINT}\n"
            + yaml.safe_dump({"runtime_env": ray_jobs.runtime_env(cfg, spec)}, sort_keys=False)
            + "\n"
        )
    return what + "# resolved config\n" + dump_config(cfg)


def submit(
    cfg: Any, config_path: Path, overrides: list[str], kind: str, follow: bool = True
) -> int:
    """Hand the job to `kind`; the exit code is the job's where this waits for it (local, a
    followed Ray job), else 0 once it is queued."""
    if kind == "local":
        from cluster import local

        return local.run(cfg, config_path, overrides)
    if kind == "slurm":
        from cluster import slurm

        script = slurm.render_script(cfg, config_path, overrides)
        job = slurm.submit(script, slurm.log_dir_of(script))
        print(f"Submitted Slurm job {job.job_id} ({cfg.name})")
        print(f"  script: {job.script_path}\n  log:    {job.log_path}")
        print(f"  status: stts-train status {job.job_id}    cancel: stts-train cancel {job.job_id}")
        return 0
    from cluster import ray_jobs

    client, job_id = ray_jobs.submit(cfg, _ray_config_yaml(config_path), overrides)
    print(f"Submitted Ray job {job_id} to {cfg.cluster.ray.address}", flush=True)
    if not follow:
        print(f"  status: stts-train status {job_id} --address {cfg.cluster.ray.address}")
        return 0
    ray_jobs.stream_logs(client, job_id, cfg.cluster.ray.timeout_s)
    state = ray_jobs.wait(client, job_id, cfg.cluster.ray.timeout_s)
    print(f"[stts] Ray job {job_id} finished: {state}", flush=True)
    return 0 if state == "SUCCEEDED" else 1
