"""`stts-train conformance DIR`: run the implementation against golden vectors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

STTS_COMPONENTS = {"scorer", "selection", "soft_bias", "aux_loss", "vit_forward"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "conformance",
        help="run the implementation against golden vectors",
        description=(
            "Run our STTS and pruner code on golden vectors (docs/stts.md, docs/pruners.md). "
            "DIR is a golden root holding stts/ and/or pruners/, or one of those folders. Prints one "
            "line per case and 'N passed, M failed'; exits 0 only if every case passes."
        ),
    )
    p.add_argument("dir", type=Path, help="golden directory, e.g. ../shared/golden/stts")
    p.add_argument("-q", "--quiet", action="store_true", help="print failures and the tally only")
    p.set_defaults(func=run)


def _suites(root: Path) -> list[tuple[str, Path]]:
    children = {c.name for c in root.iterdir() if c.is_dir()}
    if children & STTS_COMPONENTS:
        return [("stts", root)]
    suites = []
    if (root / "stts").is_dir():
        suites.append(("stts", root / "stts"))
    if (root / "pruners").is_dir():
        suites.append(("pruners", root / "pruners"))
    return suites or [("pruners", root)]


def run(args: argparse.Namespace) -> int:
    from stts_train.conformance.common import summarize
    from stts_train.errors import DataError

    root: Path = args.dir
    if not root.is_dir():
        raise DataError(f"golden directory {root} does not exist; pass e.g. ../shared/golden/stts")
    results = []
    for suite, path in _suites(root):
        if suite == "stts":
            from stts_train.conformance.stts import run_stts_goldens as runner
        else:
            from stts_train.conformance.pruners import run_pruner_goldens as runner
        results.extend(runner(path))
    for result in results:
        if not (args.quiet and result.passed):
            print(result)
    if not results:
        print(f"no golden cases found under {root}", file=sys.stderr)
        return 1
    print(summarize(results))
    return 0 if all(r.passed for r in results) else 1
