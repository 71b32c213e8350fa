"""Entrypoint of a Ray job submitted by `stts-train submit --cluster ray` (runs on the cluster).

    python -m cluster.ray_driver    # spec in $STTS_SUBMIT_SPEC (JSON), set by cluster/ray_jobs.py

Starts one Ray actor per rank in a placement group, takes the rendezvous (rank 0's node address
and a free port there) from the actors themselves, and has every actor run the same training
entry point as Slurm and local runs (`stts-train train CONFIG overrides...`) with torchrun-style
RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT. Exits with the highest rank exit code, so
the Ray job fails when a rank fails.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

SPEC_ENV = "STTS_SUBMIT_SPEC"


class RankWorker:
    """One training rank; runs the entry point as a child process and relays its output."""

    def node_ip(self) -> str:
        import ray

        return ray.util.get_node_ip_address()

    def free_port(self) -> int:
        from stts_train.parallel.launch import free_port

        return free_port("")  # every interface: the other ranks connect from their nodes

    def run(self, argv: list[str], env: dict[str, str], config_name: str, config_yaml: str) -> int:
        import subprocess
        from pathlib import Path

        # Every node gets its own copy of the working dir, so each rank writes the config itself.
        config_path = Path(".stts_submit") / f"{config_name}.yaml"
        config_path.parent.mkdir(exist_ok=True)
        config_path.write_text(config_yaml)
        argv = [a if a != "{config}" else str(config_path) for a in argv]
        proc = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            print(f"[rank {env['RANK']}] {line.rstrip()}", flush=True)
        return proc.wait()


def main(spec: dict[str, Any]) -> int:
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    ray.init()
    n = int(spec["num_workers"])
    bundle = {"CPU": float(spec["cpus_per_worker"])}
    if spec["gpus_per_worker"]:
        bundle["GPU"] = float(spec["gpus_per_worker"])
    pg = placement_group([dict(bundle) for _ in range(n)], strategy=spec["placement_strategy"])
    ray.get(pg.ready(), timeout=600)
    actor_cls = ray.remote(RankWorker)
    workers = [
        actor_cls.options(
            num_cpus=bundle["CPU"],
            num_gpus=bundle.get("GPU", 0),
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=i
            ),
        ).remote()
        for i in range(n)
    ]
    ips = ray.get([w.node_ip.remote() for w in workers])
    master_addr = ips[0]
    master_port = ray.get(workers[0].free_port.remote())
    print(
        f"[stts] ray: {n} ranks on {sorted(set(ips))}; rendezvous {master_addr}:{master_port}",
        flush=True,
    )
    seen: dict[str, int] = {}
    runs = []
    for rank, (worker, ip) in enumerate(zip(workers, ips)):
        local_rank = seen.get(ip, 0)
        seen[ip] = local_rank + 1
        env = {
            **spec["env"],
            "RANK": str(rank),
            "WORLD_SIZE": str(n),
            "LOCAL_RANK": str(local_rank),
            "MASTER_ADDR": master_addr,
            "MASTER_PORT": str(master_port),
        }
        runs.append(worker.run.remote(spec["argv"], env, spec["config_name"], spec["config_yaml"]))
    codes = ray.get(runs)
    print(f"[stts] ray: rank exit codes {codes}", flush=True)
    return max(codes)


if __name__ == "__main__":
    sys.exit(main(json.loads(os.environ[SPEC_ENV])))
