"""`stts-train train CONFIG [key=value ...]`: train, resuming from the run dir's latest
checkpoint."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (launches parallel.num_ranks local ranks, or joins torchrun/Slurm)",
        description=(
            "Train with DeepSpeed ZeRO (+ megatron-core TP). Without a launcher environment, "
            "starts parallel.num_ranks local processes; under torchrun/deepspeed (RANK, "
            "WORLD_SIZE) or srun (SLURM_PROCID, SLURM_NTASKS) runs as that rank. Resumes from "
            "<run_dir>/checkpoints/latest. Exit codes: 0 done, 2 config/checkpoint error, 3 "
            "preempted (checkpoint written), 4 non-finite loss."
        ),
    )
    p.add_argument("config", help="YAML config file (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.num_steps=20")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stts_train.train.main import train_main

    return train_main(args.config, list(args.overrides))
