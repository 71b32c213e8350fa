"""`stts-train conformance DIR`: run the implementation against golden vectors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "conformance",
        help="run the implementation against golden vectors",
        description=(
            "Run our STTS and pruner code on golden vectors (docs/stts.md, docs/pruners.md). DIR "
            "is a golden root holding stts/ and/or pruners/, or one of those folders. Prints one "
            "line per case and 'N passed, M failed'; exits 0 only if every case passes."
        ),
    )
    p.add_argument("dir", type=Path, help="golden directory, e.g. ../shared/golden/stts")
    p.add_argument("-q", "--quiet", action="store_true", help="print failures and the tally only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stts_train.conformance.common import summarize
    from stts_train.conformance.run import run_goldens

    results = run_goldens(args.dir)
    for result in results:
        if not (args.quiet and result.passed):
            print(result)
    if not results:
        print(f"no golden cases found under {args.dir}", file=sys.stderr)
        return 1
    print(summarize(results))
    return 0 if all(r.passed for r in results) else 1
