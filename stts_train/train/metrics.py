"""Step metrics: one processor on rank 0 with wandb (offline by default), JSONL and a progress bar.

Names are namespaced: train/loss, train/ce_loss, train/aux_loss, train/grad_norm, lr/<group>,
pruner/keep_ratio, perf/tokens_per_s, perf/samples_per_s, perf/mfu, perf/step_s,
data/wait_s, data/padding_waste, data/dp_imbalance, mem/peak_gib.

MFU counts FLOPs of the tokens the model actually computes (kept tokens): 6 x params x tokens
for the LLM (llm tokens after pruning), the connector (kept image tokens) and the ViT (tokens
summed over its blocks / number of blocks, so pruned blocks count only kept patches).
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from stts_train.parallel.dims import ParallelDims


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory of this rank: CUDA max allocated, or the process's max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss_kib / 2**20


def default_peak_flops(device: torch.device, precision: str) -> float:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).lower()
        dense = 989e12 if ("h100" in name or "h200" in name) else 312e12
        return dense if precision == "bf16" else dense / 2
    return 1e11


class _DummyWandb:
    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    def finish(self) -> None:
        pass


class MetricsProcessor:
    """Aggregates per-rank step numbers (collective) and logs on rank 0.

    Args:
        dims: layout (reductions run over the whole world; each DP group counted once).
        run_dir: where metrics.jsonl and samples.jsonl go.
        param_counts: full (unsharded) parameter count per group: vit, connector, llm, scorer.
        vit_layers: ViT depth (to turn summed block tokens into an average per block).
        peak_flops: per-device peak FLOP/s for MFU.
    """

    def __init__(
        self, dims: ParallelDims, run_dir: str, *, wandb_mode: str, wandb_project: str,
        run_name: str, config: dict[str, Any], jsonl: bool, progress_bar: bool, num_steps: int,
        param_counts: dict[str, int], vit_layers: int, peak_flops: float, max_llm_tokens: int,
        device: torch.device,
    ) -> None:
        self.dims, self.device = dims, device
        self.param_counts, self.vit_layers = param_counts, max(1, vit_layers)
        self.peak_flops, self.max_llm_tokens = peak_flops, max_llm_tokens
        self.rank0 = dims.is_rank0
        self.run_dir = Path(run_dir)
        self.jsonl_path = self.run_dir / "metrics.jsonl" if jsonl else None
        self.samples_path = self.run_dir / "samples.jsonl"
        self.wandb: Any = _DummyWandb()
        self.bar = None
        if not self.rank0:
            return
        if wandb_mode != "disabled":
            import os

            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.wandb = wandb.init(
                project=wandb_project, name=run_name, id=run_name, resume="allow", mode=wandb_mode,
                dir=str(self.run_dir), config=config,
            )
        if progress_bar and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=num_steps, desc=run_name, dynamic_ncols=True)

    def truncate_after(self, step: int) -> None:
        """Drop records of steps > `step` (replayed after a resume) from the JSONL logs."""
        if not self.rank0:
            return
        for path in (self.jsonl_path, self.samples_path):
            if path is None or not path.is_file():
                continue
            keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
            path.write_text("".join(ln + "\n" for ln in keep))
        if self.bar is not None:
            self.bar.n = step
            self.bar.refresh()

    def log_samples(self, step: int, keys: list[str]) -> None:
        """Record the sample keys every data-parallel rank consumed at `step` (collective)."""
        gathered: list[Any] = [None] * self.dims.dp
        dist.all_gather_object(gathered, keys, group=self.dims.dp_group)
        if self.rank0:
            with open(self.samples_path, "a") as f:
                f.write(json.dumps({"step": step, "keys": gathered}) + "\n")

    def step(self, step: int, result: Any, step_s: float, data_wait_s: float, num_samples: int,
             data_stats: dict[str, float] | None = None) -> dict[str, float]:
        """Aggregate this step's numbers over ranks (collective) and log them on rank 0.
        `data_stats`: numbers the data source computed identically on every rank (its plan), logged
        as `data/<name>`."""
        s = result.stats
        llm_tokens = s.get("llm_tokens", 0.0)
        vit_cost = s.get("vit_block_tokens", 0.0)
        cost = llm_tokens + vit_cost / self.vit_layers
        # count each data-parallel group once: TP peers hold the same batch
        w = 1.0 if self.dims.tp_rank == 0 else 0.0
        sums = torch.tensor(
            [w * llm_tokens, w * s.get("image_tokens_in", 0.0), w * s.get("image_tokens_kept", 0.0),
             w * vit_cost, w * s.get("vit_patches_in", 0.0), w * num_samples, w * cost,
             w * result.num_microbatches, data_wait_s],
            dtype=torch.float64, device=self.device,
        )
        maxes = torch.tensor([cost, step_s, peak_memory_gib(self.device), data_wait_s],
                             dtype=torch.float64, device=self.device)
        dist.all_reduce(sums)
        dist.all_reduce(maxes, op=dist.ReduceOp.MAX)
        (tok, img_in, img_kept, vit_tok, _vit_in, samples, cost_sum, n_micro, _wait_sum) = sums.tolist()
        cost_max, step_max, mem_max, wait_max = maxes.tolist()
        pc = self.param_counts
        flops = 6.0 * (
            (pc.get("llm", 0)) * tok + pc.get("connector", 0) * img_kept
            + (pc.get("vit", 0) + pc.get("scorer", 0)) * vit_tok / self.vit_layers
        )
        step_time = max(step_max, 1e-9)
        mean_cost = cost_sum / max(1, self.dims.dp)
        metrics = {
            "train/loss": result.loss,
            "train/ce_loss": result.ce_loss,
            "train/aux_loss": result.aux_loss,
            "train/grad_norm": result.grad_norm,
            "train/loss_tokens": float(result.loss_tokens),
            "pruner/keep_ratio": img_kept / img_in if img_in else 1.0,
            "perf/step_s": step_time,
            "perf/tokens_per_s": tok / step_time,
            "perf/samples_per_s": samples / step_time,
            "perf/mfu": flops / step_time / (self.peak_flops * self.dims.world_size),
            "data/wait_s": wait_max,
            "data/padding_waste": 1.0 - tok / max(1.0, n_micro * self.max_llm_tokens),
            "data/dp_imbalance": cost_max / mean_cost - 1.0 if mean_cost > 0 else 0.0,
            "mem/peak_gib": mem_max,
        }
        for name, lr in result.lr.items():
            metrics[f"lr/{name}"] = lr
        for name, value in (data_stats or {}).items():
            metrics[f"data/{name}"] = float(value)
        if self.rank0:
            self.wandb.log(metrics, step=step)
            if self.jsonl_path is not None:
                with open(self.jsonl_path, "a") as f:
                    f.write(json.dumps({"step": step, **metrics}) + "\n")
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix(loss=f"{result.loss:.4f}", tok_s=f"{metrics['perf/tokens_per_s']:.0f}")
        return metrics

    def close(self) -> None:
        if self.rank0:
            if self.bar is not None:
                self.bar.close()
            self.wandb.finish()
