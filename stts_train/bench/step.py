"""`stts-train bench step`: training-step and prefill time at each keep ratio and frame count.

The same model (same weights) runs every keep ratio side by side, round-robin within each
repeat, so machine noise hits all settings alike; the JSON reports medians, token counts, the
FLOP-predicted speed-up (from `stts_train.data.cost.CostModel`) and the measured one, both
relative to keep 1.0 at the same frame count.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

DEFAULT_CONFIG = "configs/bench_cpu.yaml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", default=DEFAULT_CONFIG, help=f"model config (default {DEFAULT_CONFIG})"
    )
    p.add_argument("--frames", default="16,64", help="comma-separated frame counts (default 16,64)")
    p.add_argument(
        "--keep", default="1.0,0.5,0.3", help="comma-separated keep ratios; 1.0 is the baseline"
    )
    p.add_argument(
        "--mode", default="train,prefill", help="train, prefill or both (comma-separated)"
    )
    p.add_argument("--text-tokens", type=int, default=64, help="prompt + answer tokens per sample")
    p.add_argument("--samples", type=int, default=1, help="videos per micro-batch")
    p.add_argument(
        "--repeats", type=int, default=5, help="timed repeats per setting (median reported)"
    )
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16")
    p.add_argument(
        "--pruner-overhead",
        action="store_true",
        help="also time the training-free pruners per video",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="ZeRO-1/2/3 at data-parallel 2 (writes engine-cpu.json)",
    )
    p.add_argument(
        "--out", default=None, help="JSON path (default bench/results/step-{cpu,gpu}.json)"
    )
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")


def build_batch(cfg, frames: int, text_tokens: int, samples: int, seed: int):
    """`samples` videos of `frames` frames with Molmo2's per-frame layout and a short answer."""
    import torch

    from stts_train.constants import Modality
    from stts_train.data.builders import make_sample
    from stts_train.data.collate import collate_row

    gen = torch.Generator().manual_seed(seed)
    answer = max(1, text_tokens // 8)
    items = [(Modality.VIDEO, frames)]
    made = [
        make_sample(cfg, f"bench-{s}", items, text_tokens - answer, answer, gen)
        for s in range(samples)
    ]
    return collate_row(made, cfg), [s.meta for s in made]


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_setting(model, batch, keep: float, mode: str, device) -> tuple[float, dict]:
    import torch

    from stts_train.train.loss import single_batch_loss

    _sync(device)
    start = time.perf_counter()
    if mode == "train":
        model.train()
        model.zero_grad(set_to_none=True)
        out = model(batch, keep_ratio=keep)
        single_batch_loss(out, model.cfg.stts.aux_loss_weight).backward()
    else:
        model.eval()
        with torch.no_grad():
            out = model(batch, keep_ratio=keep)
    _sync(device)
    return time.perf_counter() - start, out.stats


def run_bench(args: argparse.Namespace) -> dict:
    import dataclasses

    import torch
    from tqdm import tqdm

    from stts_train.bench.machine import machine_info
    from stts_train.config import load_config
    from stts_train.data.cost import CostModel
    from stts_train.models.vlm import Molmo2VLM

    job = load_config(args.config, args.set)
    cfg = job.model
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    dtype = torch.float32
    if args.dtype == "bf16" or (args.dtype == "auto" and device.type == "cuda"):
        dtype = torch.bfloat16
    frames_list = [int(x) for x in args.frames.split(",") if x]
    keeps = [float(x) for x in args.keep.split(",") if x]
    if 1.0 not in keeps:
        keeps = [1.0] + keeps
    modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    for m in modes:
        if m not in ("train", "prefill"):
            raise SystemExit(f"--mode {m!r}: expected train or prefill")
    torch.manual_seed(0)
    model = Molmo2VLM(cfg).to(device=device, dtype=dtype)
    results = []
    total = len(frames_list) * len(modes) * (args.warmup + args.repeats) * len(keeps)
    bar = tqdm(total=total, desc="bench step", unit="run")
    for frames in frames_list:
        batch, metas = build_batch(cfg, frames, args.text_tokens, args.samples, seed=frames)
        batch = batch.to(device, float_dtype=dtype)
        flops = {}
        for keep in keeps:
            cm = CostModel(
                dataclasses.replace(cfg, stts=dataclasses.replace(cfg.stts, keep_ratio=keep))
            )
            flops[keep] = sum(sum(cm.breakdown(meta).values()) for meta in metas)
        for mode in modes:
            times: dict[float, list[float]] = {k: [] for k in keeps}
            stats: dict[float, dict] = {}
            for rep in range(args.warmup + args.repeats):
                for keep in keeps:  # round-robin: every setting sees the same machine state
                    seconds, st = time_setting(model, batch, keep, mode, device)
                    if rep >= args.warmup:
                        times[keep].append(seconds)
                    stats[keep] = st
                    bar.update(1)
            base = statistics.median(times[1.0])
            for keep in keeps:
                median = statistics.median(times[keep])
                measured = base / median
                predicted = flops[1.0] / flops[keep]
                results.append(
                    {
                        "frames": frames,
                        "keep_ratio": keep,
                        "mode": mode,
                        "samples": args.samples,
                        "seconds_median": median,
                        "seconds_all": times[keep],
                        "vit_patches_in": stats[keep]["vit_patches_in"],
                        "vit_patches_kept": stats[keep]["vit_patches_kept"],
                        "vit_block_tokens": stats[keep]["vit_block_tokens"],
                        "llm_tokens": stats[keep]["llm_tokens"],
                        "model_flops_forward": flops[keep],
                        "speedup_measured": measured,
                        "speedup_predicted": predicted,
                        "measured_over_predicted": measured / predicted,
                    }
                )
    bar.close()
    report = {
        "benchmark": "step",
        "config": str(args.config),
        "overrides": list(args.set),
        "dtype": str(dtype).replace("torch.", ""),
        "machine": machine_info(device),
        "params": sum(p.numel() for p in model.parameters()),
        "results": results,
    }
    if args.pruner_overhead:
        from stts_train.bench.pruner_overhead import measure_pruner_overhead

        fwd = [r for r in results if r["mode"] == "prefill" and r["keep_ratio"] == 1.0]
        report["pruner_overhead_ms_per_video"] = measure_pruner_overhead(num_frames=64)
        if fwd:
            report["model_prefill_ms_per_video"] = {
                str(r["frames"]): 1000 * r["seconds_median"] / args.samples for r in fwd
            }
    return report


def plot(report: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({r["mode"] for r in report["results"]})
    fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        rows = [r for r in report["results"] if r["mode"] == mode and r["keep_ratio"] < 1.0]
        for keep in sorted({r["keep_ratio"] for r in rows}, reverse=True):
            pts = sorted(
                (r["frames"], r["speedup_measured"], r["speedup_predicted"])
                for r in rows
                if r["keep_ratio"] == keep
            )
            xs = [p[0] for p in pts]
            line = ax.plot(xs, [p[1] for p in pts], "o-", label=f"keep {keep} measured")[0]
            ax.plot(
                xs,
                [p[2] for p in pts],
                "x--",
                color=line.get_color(),
                label=f"keep {keep} FLOP-predicted",
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("frames")
        ax.set_ylabel("speed-up vs keep 1.0")
        ax.set_title(f"{mode} ({report['machine']['device']}, {report['dtype']})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    if args.distributed:
        from stts_train.bench.engine import run_engine_bench

        out = args.out or "bench/results/engine-cpu.json"
        run_engine_bench(args.config, out=out)
        print(f"wrote {out}")
        return 0
    report = run_bench(args)
    device = report["machine"]["device"]
    out = Path(
        args.out or f"bench/results/step-{'gpu' if device.startswith('cuda') else 'cpu'}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    plot(report, out.with_suffix(".png"))
    for r in report["results"]:
        print(
            f"{r['mode']:8s} frames={r['frames']:4d} keep={r['keep_ratio']:.2f} "
            f"{1000 * r['seconds_median']:9.1f} ms speed-up {r['speedup_measured']:.2f}x "
            f"(FLOP-predicted {r['speedup_predicted']:.2f}x, ratio "
            f"{r['measured_over_predicted']:.2f})"
        )
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0
