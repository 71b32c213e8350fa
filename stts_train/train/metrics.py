"""Step metrics: recorded locally every step, reduced every `train.log_every` steps, logged on
rank 0 to wandb (offline by default), `metrics.jsonl`, `samples.jsonl` and a progress bar.

Cadence. `MetricsProcessor.record` keeps this rank's numbers of a step and the sample keys it
consumed in a local buffer (no collective). `flush` gathers the buffered steps of every rank to
rank 0 in one collective; the trainer calls it every `log_every` steps, before every checkpoint
and at the end of the run (every rank at the same step, so the buffers match). Rank 0 then
writes one metrics row (and one wandb point) per buffered step and one `samples.jsonl` record
per step holding every data-parallel rank's keys in rank order: the files read exactly as if
each step had been logged on its own, they only grow in bursts. A crash loses the rows since
the last flush; those steps come after the last checkpoint (a checkpoint flushes first), so the
resumed run replays and logs them.

Per step (slowest rank = max over ranks; sums count each tensor-parallel group once):
    train/loss          the step objective: train/ce_loss + aux_loss_weight * train/aux_loss
    train/ce_loss       token-mean CE of the global batch (CE sum of all ranks / step loss tokens)
    train/aux_loss      STTS aux loss, mean over every micro-batch of every rank (unweighted)
    train/grad_norm     global gradient norm before clipping (DeepSpeed)
    train/loss_tokens   loss tokens of the step, all ranks
    lr/<group>          learning rate of the step, per optimizer group
    pruner/keep_ratio   kept / offered image tokens, all ranks
    perf/step_s         slowest rank's step time: data fetch to optimizer step done (metric
                        flushes and checkpoints are not in it)
    perf/tokens_per_s   LLM tokens (after pruning) of all ranks / perf/step_s
    perf/samples_per_s  samples of all ranks / perf/step_s
    perf/mfu            model FLOPs of all ranks / perf/step_s / (peak FLOP/s x world size)
    data/wait_s         slowest rank's wait for its micro-batches
    data/padding_waste  1 - LLM tokens / (rows x packing.max_llm_tokens), all ranks
    data/dp_imbalance   slowest rank's compute cost / mean cost - 1
    mem/peak_gib        largest peak memory of any rank so far
    data/<name>         numbers the data source planned (identical on every rank)

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
    """Buffers per-rank step numbers and logs them on rank 0 every `log_every` steps (module doc).

    Args:
        dims: layout (gathers run over the whole world; each tensor-parallel group counted once).
        run_dir: where metrics.jsonl and samples.jsonl go.
        log_every: `train.log_every`; `record` flushes after every step divisible by it.
        param_counts: full (unsharded) parameter count per group: vit, connector, llm, scorer.
        vit_layers: ViT depth (to turn summed block tokens into an average per block).
        peak_flops: per-device peak FLOP/s for MFU.
    """

    def __init__(
        self,
        dims: ParallelDims,
        run_dir: str,
        *,
        wandb_mode: str,
        wandb_project: str,
        run_name: str,
        config: dict[str, Any],
        jsonl: bool,
        progress_bar: bool,
        num_steps: int,
        param_counts: dict[str, int],
        vit_layers: int,
        peak_flops: float,
        max_llm_tokens: int,
        device: torch.device,
        log_every: int = 1,
    ) -> None:
        self.dims, self.device = dims, device
        self.log_every = max(1, log_every)
        self.param_counts, self.vit_layers = param_counts, max(1, vit_layers)
        self.peak_flops, self.max_llm_tokens = peak_flops, max_llm_tokens
        self.rank0 = dims.is_rank0
        self.pending: list[dict[str, Any]] = []
        """This rank's steps since the last flush."""
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
                project=wandb_project,
                name=run_name,
                id=run_name,
                resume="allow",
                mode=wandb_mode,
                dir=str(self.run_dir),
                config=config,
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
            keep = [
                ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step
            ]
            path.write_text("".join(ln + "\n" for ln in keep))
        if self.bar is not None:
            self.bar.n = step
            self.bar.refresh()

    def record(
        self,
        step: int,
        result: Any,
        step_s: float,
        data_wait_s: float,
        num_samples: int,
        keys: list[str],
        data_stats: dict[str, float] | None = None,
    ) -> list[dict[str, float]]:
        """Buffer this rank's numbers of `step` (a `train_step.StepResult`, this rank's sample
        count and keys); flushes (collective) when `step` is a multiple of `log_every`.
        `data_stats`: numbers the data source computed identically on every rank (its plan),
        logged as `data/<name>`. Returns what `flush` returns, or [] without a flush."""
        s = result.stats
        llm_tokens, vit_cost = s.get("llm_tokens", 0.0), s.get("vit_block_tokens", 0.0)
        self.pending.append(
            {
                "step": step,
                "keys": list(keys),
                "llm_tokens": llm_tokens,
                "image_tokens_in": s.get("image_tokens_in", 0.0),
                "image_tokens_kept": s.get("image_tokens_kept", 0.0),
                "vit_block_tokens": vit_cost,
                "num_samples": float(num_samples),
                "cost": llm_tokens + vit_cost / self.vit_layers,
                "num_microbatches": float(result.num_microbatches),
                "step_s": step_s,
                "data_wait_s": data_wait_s,
                "mem_gib": peak_memory_gib(self.device),
                "ce_share": result.ce_share,
                "aux_share": result.aux_share,
                "loss_share": result.loss_share,
                # global already (identical on every rank): rank 0 logs its own copy
                "grad_norm": result.grad_norm,
                "loss_tokens": float(result.loss_tokens),
                "lr": dict(result.lr),
                "data_stats": dict(data_stats or {}),
            }
        )
        return self.flush() if step % self.log_every == 0 else []

    def flush(self) -> list[dict[str, float]]:
        """Gather every rank's buffered steps to rank 0 and log them there (one collective, made
        by every rank at the same step; nothing when the buffers are empty). Returns the logged
        metrics per step on rank 0, [] elsewhere."""
        if not self.pending:
            return []
        dims = self.dims
        payload = {"tp_rank": dims.tp_rank, "dp_rank": dims.dp_rank, "steps": self.pending}
        self.pending = []
        gathered: list[Any] | None = [None] * dims.world_size if self.rank0 else None
        dist.gather_object(payload, gathered, dst=0)
        if not self.rank0:
            return []
        assert gathered is not None
        num_steps = {len(p["steps"]) for p in gathered}
        if len(num_steps) != 1:
            raise RuntimeError(
                f"ranks buffered different step counts {sorted(num_steps)}; flush "
                "must be called by every rank at the same step"
            )
        # each tensor-parallel group once, in data-parallel rank order
        once = sorted((p for p in gathered if p["tp_rank"] == 0), key=lambda p: p["dp_rank"])
        logged = []
        for i, own in enumerate(payload["steps"]):
            step = own["step"]
            metrics = self._step_metrics(
                own, [p["steps"][i] for p in once], [p["steps"][i] for p in gathered]
            )
            self._write(step, metrics, [p["steps"][i]["keys"] for p in once])
            logged.append(metrics)
        return logged

    def _step_metrics(
        self, own: dict[str, Any], once: list[dict[str, Any]], every: list[dict[str, Any]]
    ) -> dict[str, float]:
        """One step's metrics from the records of that step: `once` = one per tensor-parallel
        group (sums), `every` = all ranks (maxes), `own` = rank 0's (global numbers)."""

        def total(name: str) -> float:
            return sum(r[name] for r in once)

        def slowest(name: str) -> float:
            return max(r[name] for r in every)

        tok, img_kept = total("llm_tokens"), total("image_tokens_kept")
        img_in = total("image_tokens_in")
        pc = self.param_counts
        flops = 6.0 * (
            pc.get("llm", 0) * tok
            + pc.get("connector", 0) * img_kept
            + (pc.get("vit", 0) + pc.get("scorer", 0)) * total("vit_block_tokens") / self.vit_layers
        )
        step_time = max(slowest("step_s"), 1e-9)
        mean_cost = total("cost") / max(1, self.dims.dp)
        rows = total("num_microbatches")
        metrics = {
            "train/loss": total("loss_share"),
            "train/ce_loss": total("ce_share"),
            "train/aux_loss": total("aux_share"),
            "train/grad_norm": own["grad_norm"],
            "train/loss_tokens": own["loss_tokens"],
            "pruner/keep_ratio": img_kept / img_in if img_in else 1.0,
            "perf/step_s": step_time,
            "perf/tokens_per_s": tok / step_time,
            "perf/samples_per_s": total("num_samples") / step_time,
            "perf/mfu": flops / step_time / (self.peak_flops * self.dims.world_size),
            "data/wait_s": slowest("data_wait_s"),
            "data/padding_waste": 1.0 - tok / max(1.0, rows * self.max_llm_tokens),
            "data/dp_imbalance": slowest("cost") / mean_cost - 1.0 if mean_cost > 0 else 0.0,
            "mem/peak_gib": slowest("mem_gib"),
        }
        for name, lr in own["lr"].items():
            metrics[f"lr/{name}"] = lr
        for name, value in own["data_stats"].items():
            metrics[f"data/{name}"] = float(value)
        return metrics

    def _write(self, step: int, metrics: dict[str, float], keys: list[list[str]]) -> None:
        self.wandb.log(metrics, step=step)
        if self.jsonl_path is not None:
            with open(self.jsonl_path, "a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
        with open(self.samples_path, "a") as f:
            f.write(json.dumps({"step": step, "keys": keys}) + "\n")
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(
                loss=f"{metrics['train/loss']:.4f}", tok_s=f"{metrics['perf/tokens_per_s']:.0f}"
            )

    def close(self) -> None:
        if self.rank0:
            if self.bar is not None:
                self.bar.close()
            self.wandb.finish()
