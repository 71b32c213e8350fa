"""`stts-train status JOB`: state of a Slurm job (numeric id) or a Ray job (with --address)."""

from __future__ import annotations

import argparse
import re


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status", help="show a submitted job's state (Slurm or Ray)", description=__doc__
    )
    add_job_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    """JOB, --cluster and --address, shared by `status` and `cancel` (see `backend`)."""
    p.add_argument("job", help="Slurm job id, or Ray submission id")
    p.add_argument(
        "--cluster",
        choices=("slurm", "ray"),
        default=None,
        help="default: ray when --address is given or the id is not numeric, else slurm",
    )
    p.add_argument("--address", help="Ray Jobs API address, e.g. http://127.0.0.1:8265")


def backend(args: argparse.Namespace) -> str:
    if args.cluster:
        return args.cluster
    return "slurm" if re.fullmatch(r"\d+(_\d+)?", args.job) and not args.address else "ray"


def run(args: argparse.Namespace) -> int:
    import json
    import os

    if backend(args) == "slurm":
        from cluster import slurm

        info = slurm.status(args.job)
    else:
        from cluster import ray_jobs

        info = ray_jobs.status(args.address or os.environ.get("RAY_ADDRESS", ""), args.job)
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0
