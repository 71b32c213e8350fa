"""`stts-train data {build,verify,stats}`: WebDataset shards from videos + JSONL annotations."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="build, verify and inspect video WebDataset shards")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    b = dsub.add_parser(
        "build",
        help="videos + JSONL annotations -> shards in a dir or s3://",
        description="Write WebDataset tar shards (video bytes as they are, plus a "
        "JSON record per sample) and a manifest with a dataset fingerprint. "
        "Re-running with the same inputs writes nothing.",
    )
    b.add_argument("src", metavar="SRC", help="folder with videos and an annotations JSONL file")
    b.add_argument("dest", metavar="DEST", help="output directory or s3://bucket/prefix")
    b.add_argument(
        "--annotations",
        default=None,
        help="JSONL file (default: SRC/annotations.jsonl or the only *.jsonl in SRC)",
    )
    b.add_argument("--max-samples-per-shard", type=int, default=1000)
    b.add_argument("--max-shard-bytes", type=int, default=1 << 30)
    b.add_argument("--num-probe-workers", type=int, default=2, help="parallel Ray probe tasks")
    b.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out unreadable videos (logged) instead of failing",
    )
    b.add_argument("--ray-address", default=None, help="Ray cluster (default: local in-process)")
    b.add_argument("--s3-endpoint-url", default=None, help="S3-compatible endpoint")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=run_build)

    v = dsub.add_parser(
        "verify",
        help="decode every sample of a built dataset",
        description="Read every shard and decode every sample; exit 1 on any "
        "failure, listing the sample keys.",
    )
    v.add_argument("path", metavar="DEST")
    v.add_argument("--frames", type=int, default=4, help="frames decoded per sample")
    v.add_argument("--image-size", type=int, default=112)
    v.add_argument("--decoder", choices=["auto", "torchcodec", "pyav"], default="auto")
    v.add_argument("--s3-endpoint-url", default=None)
    v.add_argument("--no-progress", action="store_true")
    v.set_defaults(func=run_verify)

    s = dsub.add_parser("stats", help="counts and length distributions of a built dataset")
    s.add_argument("path", metavar="DEST")
    s.add_argument("--max-frames", type=int, default=16)
    s.add_argument("--max-fps", type=float, default=2.0)
    s.add_argument("--s3-endpoint-url", default=None)
    s.set_defaults(func=run_stats)


def _opts(args: argparse.Namespace):  # -> StorageOptions
    from pipelines.storage import StorageOptions

    return StorageOptions(endpoint_url=args.s3_endpoint_url)


def run_build(args: argparse.Namespace) -> int:
    import logging

    from pipelines.build import build

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    manifest = build(
        args.src,
        args.dest,
        annotations=args.annotations,
        max_samples_per_shard=args.max_samples_per_shard,
        max_shard_bytes=args.max_shard_bytes,
        num_probe_workers=args.num_probe_workers,
        skip_bad=args.skip_bad,
        ray_address=args.ray_address,
        storage_options=_opts(args),
        progress=not args.no_progress,
    )
    print(
        f"{manifest['num_samples']} samples in {manifest['num_shards']} shards at {args.dest} "
        f"(fingerprint {manifest['fingerprint'][:16]})"
    )
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from pipelines.report import verify, verify_spec

    spec = verify_spec(args.image_size, args.frames)
    report = verify(
        args.path, spec, _opts(args), backend=args.decoder, progress=not args.no_progress
    )
    for f in report["failures"]:
        print(f"FAIL {f['kind']} key={f['key']} shard={f['shard']}: {f['message']}")
    print(
        f"{report['num_ok']}/{report['num_samples']} samples decoded; "
        f"{len(report['failures'])} failure(s)"
    )
    return 0 if report["ok"] else 1


def run_stats(args: argparse.Namespace) -> int:
    from pipelines.report import stats

    print(json.dumps(stats(args.path, _opts(args), args.max_frames, args.max_fps), indent=2))
    return 0
