"""`stts-train bench packing`: the planner vs the baselines on generated length traces.

Traces (seeded, one per setting): a stream of windows of `--window` samples; each sample is a
video (50%), an image (30%) or text only (20%). Video frames are long-tailed: log-normal around
32 frames, clipped to [8, 256]. Text is log-normal around 150 tokens, clipped to [20, 2000];
a video adds 5 marker tokens per frame (timestamp, frame start/end), an image 11. Loss tokens are
10-50% of the text. Settings: keep ratio 1.0 / 0.5 / 0.3 x data-parallel size 8 / 64, on the
default (Molmo2-4B) model config; row budgets hold about two of the largest samples: 32768 LLM
tokens (65536 at keep 1.0, where a 256-frame video alone needs ~24k) and 393216 ViT patches (a
256-frame video is 186624).

For every algorithm and setting the JSON holds padding_waste_llm, padding_waste_vit,
imbalance_mean, imbalance_p95, carried_over (mean samples carried per window; never dropped),
planner_ms (mean and p95 per window, planning only; per-sample length/cost lookup happens once at
ingest and is reported as ingest_ms) plus fill and rows. Algorithms and definitions:
`stts_train.bench.planners`.
`live` holds the training loader's own plan (closed windows over all ranks' samples, with and
without keeping samples on the rank that decoded them) with the fraction of samples and ViT
patches it moves between ranks.
Module-level imports are stdlib only (the CLI imports this module to register it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from stts_train.bench.machine import machine_info
from stts_train.constants import Modality

KEEP_RATIOS = (1.0, 0.5, 0.3)
DP_SIZES = (8, 64)
MODALITY_MIX = ((Modality.VIDEO, 0.5), (Modality.IMAGE, 0.3), (Modality.TEXT, 0.2))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        default="bench/results/packing.json",
        help="JSON output (a PNG is written beside it)",
    )
    parser.add_argument("--window", type=int, default=512, help="new samples per planner window")
    parser.add_argument("--windows", type=int, default=16, help="windows per setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--algorithms",
        default="balanced,pad_to_longest,ffd,knapsack",
        help="comma-separated subset of balanced,pad_to_longest,ffd,knapsack",
    )
    parser.add_argument(
        "--dp", default=",".join(map(str, DP_SIZES)), help="comma-separated data-parallel sizes"
    )
    parser.add_argument(
        "--keep", default=",".join(map(str, KEEP_RATIOS)), help="comma-separated keep ratios"
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument(
        "--live-window",
        type=int,
        default=64,
        help="live loader: decoded samples per rank per window (packing.window_size)",
    )
    parser.add_argument(
        "--live-windows", type=int, default=8, help="live loader: windows per setting"
    )


def generate_trace(num_samples: int, seed: int, start: int = 0):
    """A list of SampleMeta with realistic long-tailed lengths (pure function of seed, start)."""
    import numpy as np

    from stts_train.data.lengths import SampleMeta

    rng = np.random.default_rng([seed, start])
    mods = np.array([int(m) for m, _ in MODALITY_MIX])
    probs = np.array([p for _, p in MODALITY_MIX])
    modality = rng.choice(mods, size=num_samples, p=probs)
    frames = np.clip(np.round(np.exp(rng.normal(np.log(32), 0.9, num_samples))), 8, 256).astype(int)
    text = np.clip(np.round(np.exp(rng.normal(np.log(150), 1.0, num_samples))), 20, 2000).astype(
        int
    )
    loss_frac = rng.uniform(0.1, 0.5, num_samples)
    out = []
    for i in range(num_samples):
        m = int(modality[i])
        loss = max(1, int(text[i] * loss_frac[i]))
        if m == Modality.VIDEO:
            t = int(frames[i])
            meta = SampleMeta(
                key=f"s{seed}-{start + i}",
                modalities=(m,),
                frames=(t,),
                num_text_tokens=int(text[i]) + 5 * t,
                num_loss_tokens=loss,
            )
        elif m == Modality.IMAGE:
            meta = SampleMeta(
                key=f"s{seed}-{start + i}",
                modalities=(m,),
                frames=(1,),
                num_text_tokens=int(text[i]) + 11,
                num_loss_tokens=loss,
            )
        else:
            meta = SampleMeta(
                key=f"s{seed}-{start + i}", num_text_tokens=int(text[i]), num_loss_tokens=loss
            )
        out.append(meta)
    return out


def budgets_for(keep: float) -> tuple[int, int]:
    """Row budgets: room for about two of the largest samples (a 256-frame video is 10.4k kept
    image tokens at keep 0.5, 20.7k at 1.0, and 186624 patches)."""
    return (32768 if keep <= 0.5 else 65536), 393216


def run_setting(algorithm: str, keep: float, dp: int, args: argparse.Namespace) -> dict:
    import numpy as np

    from stts_train.bench.planners import StreamingPlanner, plan_metrics, plan_window
    from stts_train.config.model import ModelConfig, SttsConfig
    from stts_train.config.packing import PackingConfig
    from stts_train.data.cost import CostModel
    from stts_train.data.planner import PoolArrays

    model_cfg = ModelConfig(stts=SttsConfig(keep_ratio=keep))
    cost = CostModel(model_cfg)
    max_llm, max_vit = budgets_for(keep)
    cfg = PackingConfig(
        max_llm_tokens=max_llm, max_vit_patches=max_vit, window_size=args.window, seed=args.seed
    )
    planner = StreamingPlanner(cfg, cost, dp, algorithm)
    per_window, plan_ms, ingest_ms, carried, pool_sizes = [], [], [], [], []
    for w in range(args.windows):
        metas = generate_trace(args.window, args.seed, w * args.window)
        t0 = time.perf_counter()
        arrays = PoolArrays.from_metas(metas, cost)
        t1 = time.perf_counter()
        plan, _, pool = planner.plan(metas, arrays)
        t2 = time.perf_counter()
        ingest_ms.append((t1 - t0) * 1e3)
        plan_ms.append((t2 - t1) * 1e3)
        carried.append(len(plan.carried_over))
        pool_sizes.append(len(pool))
        m = plan_metrics(plan, pool, cost, cfg)
        if m is not None:
            per_window.append(m)
    # The done-criterion timing: planning one fresh 512-sample window (no carry).
    fresh_ms = []
    for w in range(3):
        arrays = PoolArrays.from_metas(generate_trace(512, args.seed + 1, w * 512), cost)
        t0 = time.perf_counter()
        plan_window(arrays, dp, cfg, cost.geom.patches_per_frame, algorithm, flush=True)
        fresh_ms.append((time.perf_counter() - t0) * 1e3)

    def agg(key: str, fn) -> float:
        vals = [m[key] for m in per_window]
        return float(fn(vals)) if vals else float("nan")

    return {
        "algorithm": algorithm,
        "keep_ratio": keep,
        "dp": dp,
        "max_llm_tokens": max_llm,
        "max_vit_patches": max_vit,
        "windows": args.windows,
        "windows_with_rows": len(per_window),
        "padding_waste_llm": agg("padding_waste_llm", np.mean),
        "padding_waste_vit": agg("padding_waste_vit", np.mean),
        "imbalance_mean": agg("imbalance", np.mean),
        "imbalance_p95": agg("imbalance", lambda v: np.percentile(v, 95)),
        "carried_over": float(np.mean(carried)),
        "carried_over_max": int(np.max(carried)),
        "pool_mean": float(np.mean(pool_sizes)),
        "planner_ms": float(np.mean(plan_ms)),
        "planner_ms_512": float(np.median(fresh_ms)),
        "planner_ms_p95": float(np.percentile(plan_ms, 95)),
        "ingest_ms": float(np.mean(ingest_ms)),
        "padding_waste_llm_tokens": agg("padding_waste_llm_tokens", np.mean),
        "padding_waste_vit_patches": agg("padding_waste_vit_patches", np.mean),
        "fill_llm": agg("fill_llm", np.mean),
        "fill_vit": agg("fill_vit", np.mean),
        "rows_per_rank_mean": agg("rows_per_rank", np.mean),
        "samples_per_window": agg("samples", np.mean),
    }


def run_live_setting(keep: float, dp: int, args: argparse.Namespace, prefer_home: bool) -> dict:
    """The live loader's plan (`stts_train.data.loader`): every rank holds `--live-window` decoded
    samples, the union is planned whole (nothing carried), and samples stay on their rank where the
    balance allows (`prefer_home`) or placement ignores where they are (then ranks are
    relabelled)."""
    import numpy as np

    from stts_train.bench.planners import plan_metrics
    from stts_train.config.model import ModelConfig, SttsConfig
    from stts_train.config.packing import PackingConfig
    from stts_train.data.cost import CostModel
    from stts_train.data.planner import Plan, PoolArrays, assign_window

    cost = CostModel(ModelConfig(stts=SttsConfig(keep_ratio=keep)))
    max_llm, max_vit = budgets_for(keep)
    cfg = PackingConfig(
        max_llm_tokens=max_llm,
        max_vit_patches=max_vit,
        seed=args.seed,
        prefer_home_rank=prefer_home,
    )
    per_rank = args.live_window
    n = per_rank * dp
    home = [i // per_rank for i in range(n)]
    rows, ms, moved, moved_vit = [], [], [], []
    for w in range(args.live_windows):
        metas = generate_trace(n, args.seed + 2, w * n)
        pool = PoolArrays.from_metas(metas, cost)
        t0 = time.perf_counter()
        ranks = assign_window(pool, home, dp, cfg)
        ms.append((time.perf_counter() - t0) * 1e3)
        away = [i for r, rank in enumerate(ranks) for row in rank for i in row if home[i] != r]
        moved.append(len(away) / n)
        moved_vit.append(float(pool.vit_patches[away].sum() / pool.vit_patches.sum()))
        rows.append(plan_metrics(Plan("balanced", ranks, []), pool, cost, cfg))
    return {
        "mode": "prefer_home_rank" if prefer_home else "balance_first",
        "keep_ratio": keep,
        "dp": dp,
        "samples_per_rank": per_rank,
        "windows": args.live_windows,
        "padding_waste_llm": float(np.mean([m["padding_waste_llm"] for m in rows])),
        "padding_waste_vit": float(np.mean([m["padding_waste_vit"] for m in rows])),
        "imbalance_mean": float(np.mean([m["imbalance"] for m in rows])),
        "imbalance_p95": float(np.percentile([m["imbalance"] for m in rows], 95)),
        "moved_samples": float(np.mean(moved)),
        "moved_vit_patches": float(np.mean(moved_vit)),
        "carried_over": 0.0,
        "planner_ms": float(np.mean(ms)),
    }


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    algos = sorted(
        {r["algorithm"] for r in results},
        key=["balanced", "pad_to_longest", "ffd", "knapsack"].index,
    )
    settings = sorted({(r["keep_ratio"], r["dp"]) for r in results}, key=lambda s: (-s[0], s[1]))
    metrics = ["padding_waste_llm", "padding_waste_vit", "imbalance_p95"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4.2))
    width = 0.8 / len(algos)
    for ax, metric in zip(axes, metrics):
        for k, algo in enumerate(algos):
            vals = []
            for s in settings:
                row = next(
                    r for r in results if r["algorithm"] == algo and (r["keep_ratio"], r["dp"]) == s
                )
                vals.append(row[metric])
            ax.bar([x + k * width for x in range(len(settings))], vals, width, label=algo)
        ax.set_xticks([x + width * (len(algos) - 1) / 2 for x in range(len(settings))])
        ax.set_xticklabels([f"keep {s[0]}\ndp {s[1]}" for s in settings], fontsize=8)
        ax.set_yscale("symlog", linthresh=0.01)
        ax.axhline(0.02 if metric != "padding_waste_llm" else 0.01, color="k", ls="--", lw=0.8)
        ax.set_title(metric)
    axes[0].legend(fontsize=8)
    fig.suptitle("packing: modelled waste and data-parallel imbalance (dashed: target)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    dps = [int(x) for x in str(args.dp).split(",")]
    keeps = [float(x) for x in str(args.keep).split(",")]
    results, live = [], []
    for keep in keeps:
        for dp in dps:
            for algo in algorithms:
                r = run_setting(algo, keep, dp, args)
                results.append(r)
                print(
                    f"keep={keep} dp={dp:>3} {algo:>14}: waste llm {r['padding_waste_llm']:.4f} "
                    f"vit {r['padding_waste_vit']:.4f} imbalance mean {r['imbalance_mean']:.4f} "
                    f"p95 {r['imbalance_p95']:.4f} carried {r['carried_over']:.1f} plan "
                    f"{r['planner_ms']:.1f} ms",
                    flush=True,
                )
            for prefer_home in (True, False):
                r = run_live_setting(keep, dp, args, prefer_home)
                live.append(r)
                print(
                    f"    live {r['mode']}: waste llm {r['padding_waste_llm']:.4f} vit "
                    f"{r['padding_waste_vit']:.4f} imbalance p95 {r['imbalance_p95']:.4f} moved "
                    f"samples {r['moved_samples']:.3f} patches {r['moved_vit_patches']:.3f} plan "
                    f"{r['planner_ms']:.1f} ms",
                    flush=True,
                )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": "packing",
        "machine": machine_info(),
        "trace": {
            "window": args.window,
            "windows": args.windows,
            "seed": args.seed,
            "modality_mix": {"video": 0.5, "image": 0.3, "text": 0.2},
            "frames": "lognormal(median 32, sigma 0.9) clipped to [8, 256]",
            "text_tokens": "lognormal(median 150, sigma 1.0) clipped to [20, 2000]",
        },
        "model": "ModelConfig() defaults (Molmo2-4B geometry), keep ratio per setting",
        "definitions": {
            "padding_waste_llm/vit": (
                "1 - useful modelled cost / cost paid in that stage when ranks run micro-batch j "
                "in lockstep (each pays for the largest row at j), incl. in-row padding "
                "(pad_to_longest); mean over windows"
            ),
            "padding_waste_llm_tokens/vit_patches": (
                "the same, counted in tokens / patches instead of cost"
            ),
            "fill_llm/vit": (
                "tokens (patches) used / (rows x budget); rows are varlen, "
                "unused budget costs nothing"
            ),
            "imbalance": (
                "max rank cost / mean rank cost - 1, per window; mean and p95 over windows"
            ),
            "carried_over": (
                "samples carried into the next window (mean over all windows, incl. windows where "
                "the balanced planner waits for more samples and carries all of them)"
            ),
            "planner_ms": "wall time of planning one window (carry + new samples), mean",
            "planner_ms_512": (
                "wall time of planning a fresh 512-sample window (no carry), median of 3"
            ),
            "windows_with_rows": "windows that emitted a step (waste and imbalance are over these)",
        },
        "results": results,
        "live": live,
        "live_definitions": {
            "what": (
                "the training loader's plan: each rank holds samples_per_rank decoded samples, "
                "the union is planned whole (nothing carried, so a checkpoint needs only the "
                "window start)"
            ),
            "prefer_home_rank": (
                "a sample stays on the rank holding it when a row there fits it within the "
                "balance tolerance (packing.prefer_home_rank, the default)"
            ),
            "balance_first": (
                "placement ignores where samples are; ranks are then relabelled for locality"
            ),
            "moved_samples / moved_vit_patches": (
                "fraction of samples / of ViT patches sent to another rank"
            ),
            "planner_ms": "plan + locality steps for the whole window (all ranks' samples), mean",
        },
    }
    out.write_text(json.dumps(doc, indent=1))
    if not args.no_plot:
        plot(results, out.with_suffix(".png"))
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
