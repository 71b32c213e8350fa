"""Engine benchmark: step time and peak memory per rank for ZeRO-1/2/3 at data-parallel 2.

    run_engine_bench("configs/tiny_cpu.yaml", zero_stages=(1, 2, 3), dp=2, steps=6,
                     out="bench/results/engine-cpu.json")

Each stage runs in its own `dp`-process group (gloo on CPU) on the config's model with the
deterministic synthetic data; the first `warmup` steps are excluded from the medians. Peak memory
is the process's max RSS on CPU (CUDA max allocated on GPU). Stages run one after the other on
the same machine, so their ratios are comparable; absolute CPU times are noisy.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _bench_worker(cfg_dict: dict, steps: int, warmup: int) -> dict:
    import torch
    import torch.distributed as dist

    from stts_train.config import config_from_dict
    from stts_train.train.metrics import peak_memory_gib
    from stts_train.train.trainer import Trainer

    cfg = config_from_dict(cfg_dict)
    trainer = Trainer(cfg)
    times, shares = [], []
    for step in range(steps):
        mbs = trainer.data.next_microbatches(step)
        t0 = time.perf_counter()
        result = trainer.train_step(mbs)
        times.append(time.perf_counter() - t0)
        shares.append(result.loss_share)
    # the step losses: this rank's shares summed over the data-parallel ranks, once at the end
    step_losses = torch.tensor(shares, dtype=torch.float64, device=trainer.device)  # (steps,)
    dist.all_reduce(step_losses, group=trainer.dims.dp_group)
    losses = step_losses.cpu().tolist()
    timed = times[warmup:] or times
    out = {
        "rank": trainer.dims.rank,
        "step_s_median": statistics.median(timed),
        "step_s_all": times,
        "peak_mem_gib": peak_memory_gib(torch.device(trainer.device)),
        "losses": losses,
    }
    trainer.close()
    return out


def run_engine_bench(
    config_path: str,
    zero_stages: tuple[int, ...] = (1, 2, 3),
    dp: int = 2,
    steps: int = 6,
    out: str | None = "bench/results/engine-cpu.json",
    warmup: int = 1,
    overrides: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run the benchmark and write the JSON report (returns it)."""
    import torch

    from stts_train.bench.machine import machine_info
    from stts_train.config import load_config
    from stts_train.config.base import to_dict
    from stts_train.testing import run_distributed_test

    base = load_config(config_path, list(overrides))
    results = []
    for stage in zero_stages:
        with tempfile.TemporaryDirectory(prefix="stts-engine-bench-") as tmp:
            cfg = to_dict(base)
            cfg["parallel"].update(zero_stage=stage, num_ranks=dp, tensor_parallel=1)
            cfg["train"].update(run_dir=tmp, data_source="synthetic", num_steps=steps)
            cfg["checkpoint"].update(resume=False, at_end=False)
            cfg["metrics"].update(wandb_mode="disabled", progress_bar=False)
            t0 = time.perf_counter()
            ranks = run_distributed_test(_bench_worker, dp, (cfg, steps, warmup), timeout_s=600)
            wall = time.perf_counter() - t0
        results.append(
            {
                "zero_stage": stage,
                "dp": dp,
                "steps": steps,
                "warmup_steps": warmup,
                "wall_s_incl_startup": wall,
                "per_rank": [
                    {
                        "rank": r["rank"],
                        "step_s_median": r["step_s_median"],
                        "step_s_all": r["step_s_all"],
                        "peak_mem_gib": r["peak_mem_gib"],
                    }
                    for r in ranks
                ],
                "step_s_median_max_rank": max(r["step_s_median"] for r in ranks),
                "losses": ranks[0]["losses"],
            }
        )
    report = {
        "benchmark": "engine",
        "config": str(config_path),
        "overrides": list(overrides),
        "precision": base.parallel.precision,
        "machine": machine_info(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
        "results": results,
        "notes": "step time = forward+backward+optimizer step of one global batch (synthetic data, "
        "micro_batches_per_step from the config); peak memory = max RSS per rank process "
        "on CPU. Stages ran back to back on a shared machine.",
    }
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
    return report
