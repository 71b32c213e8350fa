"""`stts-train demo`: the main job end to end on one machine."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole system on one machine: data, STTS training with resume, eval, report",
        description=(
            "Generate a video QA benchmark from real assets, build shards, train a small Molmo2-"
            "architecture model with STTS (keep 0.5) on 2 ranks under DeepSpeed ZeRO-3 with Ray "
            "decoding, SIGKILL and resume it, train the unpruned model, evaluate both (plus "
            "training-free pruners), measure speed, and write a markdown report with plots."
        ),
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument(
        "--quick", action="store_true", help="a shortened run (fewer clips and steps) for CI"
    )
    p.add_argument(
        "--s3",
        action="store_true",
        help="store shards on a local S3 server (moto) instead of a folder",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stts_train.demo.run import run_demo

    path = run_demo(args.out, quick=args.quick, s3=args.s3)
    print(f"report written to {path}")
    return 0
