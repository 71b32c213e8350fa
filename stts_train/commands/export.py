"""`stts-train export CHECKPOINT OUT`: ZeRO (+TP) shards -> a servable Hugging Face Molmo2 dir.

CHECKPOINT may be a committed step dir (`.../checkpoints/step-00000100`), a checkpoint root
(its `latest` is used) or a run dir (`<run_dir>/checkpoints/latest`); local or s3://. The work
is done by `stts_train.checkpoint.export.export_checkpoint`.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="consolidate a sharded checkpoint into a Hugging Face Molmo2 directory"
    )
    p.add_argument("checkpoint", help="step dir, checkpoint root or run dir (local or s3://)")
    p.add_argument(
        "out", help="output directory (config.json, safetensors shards, tokenizer, processor)"
    )
    p.add_argument(
        "--dtype", choices=("bf16", "fp32"), default="bf16", help="weight dtype (default bf16)"
    )
    p.add_argument(
        "--max-shard-size", default="5GB", help="largest weight shard, e.g. 5GB (default), 500MB"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stts_train.checkpoint.export import export_checkpoint, parse_size

    result = export_checkpoint(
        args.checkpoint,
        args.out,
        dtype=args.dtype,
        max_shard_bytes=parse_size(args.max_shard_size),
        progress=True,
    )
    print(
        f"exported {args.checkpoint} (step {result.step}, {result.num_tensors} tensors) "
        f"to {result.out_dir}"
    )
    return 0
