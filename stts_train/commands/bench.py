"""`stts-train bench {step,packing,decode}`: benchmarks that write JSON (+ PNG) under
bench/results/."""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "step": ("stts_train.bench.step", "training step and prefill time vs keep ratio and frames"),
    "packing": ("stts_train.bench.packing", "planner padding waste and data-parallel imbalance"),
    "decode": ("stts_train.bench.decode", "video decode throughput and data wait with Ray actors"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks (JSON + PNG under bench/results/)",
        description=(
            "Benchmarks; each writes a JSON file with the machine description and a PNG plot."
        ),
    )
    bench_sub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, (module_name, help_text) in BENCHMARKS.items():
        bp = bench_sub.add_parser(name, help=help_text, description=help_text)
        bp.set_defaults(func=run, bench_module=module_name)
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:  # a missing optional extra must not break --help of the rest
            bp.set_defaults(bench_import_error=str(e))
            continue
        module.add_arguments(bp)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "bench_import_error", None):
        raise SystemExit(
            f"stts-train bench {args.benchmark}: cannot import {args.bench_module}: "
            f"{args.bench_import_error}"
        )
    module = importlib.import_module(args.bench_module)
    return int(module.run(args) or 0)
