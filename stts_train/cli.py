"""The `stts-train` command line. Each subcommand lives in `stts_train.commands.<name>` and
exposes `register(subparsers)`; modules import heavy libraries only inside their `run`, so
`stts-train --help` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys

from stts_train.errors import STTSError

COMMAND_MODULES = (
    "data",
    "train",
    "submit",
    "status",
    "cancel",
    "eval",
    "bench",
    "export",
    "conformance",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stts-train",
        description="Distributed training of video VLMs with STTS token pruning.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"stts_train.commands.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except STTSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
