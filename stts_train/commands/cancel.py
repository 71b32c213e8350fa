"""`stts-train cancel JOB`: cancel a Slurm job (scancel) or stop a Ray job (with --address)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from stts_train.commands.status import (
        add_job_arguments,  # stdlib-only module, see test_layering
    )

    p = sub.add_parser("cancel", help="cancel a submitted job (Slurm or Ray)", description=__doc__)
    add_job_arguments(p)
    p.add_argument(
        "--signal",
        help="Slurm only: send this signal (e.g. USR1) to the batch shell "
        "instead of cancelling; USR1 makes the job checkpoint and requeue itself",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from stts_train.commands.status import backend

    if backend(args) == "slurm":
        from cluster import slurm

        slurm.cancel(args.job, signal=args.signal)
        print(f"{'Signalled' if args.signal else 'Cancelled'} Slurm job {args.job}")
        return 0
    from cluster import ray_jobs

    stopped = ray_jobs.cancel(args.address or os.environ.get("RAY_ADDRESS", ""), args.job)
    print(f"Ray job {args.job}: {'stop requested' if stopped else 'already finished'}")
    return 0
