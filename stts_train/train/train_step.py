"""One optimizer step through the DeepSpeed engine: the math, no loop bookkeeping.

Collectives: one blocking all-gather of a tiny vector before the first forward carries what the
step needs from every rank (loss tokens, micro-batches, samples, the stop request), each rank
reduces it locally; everything else in the step is DeepSpeed's own gradient and grad-norm
traffic. The loss normalisation lives in `stts_train/train/loss.py`. Shape legend: R ranks of
the world, V values per rank.

Non-finite losses: `StepLoss.backward_loss` turns a non-finite micro-batch loss into NaN
gradients, and DeepSpeed's gradient norm is global (all data-parallel and tensor-parallel
ranks), so a NaN on any rank makes every rank raise `NonFiniteError` after `engine.step()`, in
the same step and before any checkpoint is written (ZeRO skips a non-finite update; whatever
the optimizer did in memory dies with the process).

Ranks with fewer micro-batches than the busiest rank replay their last micro-batch with weight 0,
so every rank issues the same collectives (ZeRO-2/3 reduce inside backward).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from stts_train.constants import IGNORE_INDEX
from stts_train.data.batch import MicroBatch
from stts_train.errors import STTSError
from stts_train.parallel.dims import ParallelDims
from stts_train.train.loss import StepLoss


class NonFiniteError(STTSError):
    """Loss or grad norm is NaN/inf; the run stops without writing a checkpoint."""


@dataclass
class StepResult:
    """One step on this rank. Numbers marked "share" are this rank's part of a global value
    (summed over the data-parallel ranks they give it); the rest are already global."""

    ce_share: float
    """This rank's share of the step's CE loss (CE sum here / global loss tokens)."""
    aux_share: float
    """This rank's share of the step's mean aux loss (unweighted)."""
    loss_share: float
    """ce_share + aux_loss_weight * aux_share."""
    grad_norm: float
    lr: dict[str, float]
    num_microbatches: int
    """Micro-batches per rank (the busiest rank's count)."""
    loss_tokens: int
    """Loss tokens of the whole step (all data-parallel ranks)."""
    num_samples: int
    """Samples of the whole step (all data-parallel ranks; padding rows count none)."""
    stop: bool = False
    """Some rank had a stop request when the step began: every rank stops after this step."""
    stats: dict[str, float] = field(default_factory=dict)
    """Model stats summed over this rank's micro-batches."""
    compute_s: float = 0.0


def _count_loss_tokens(mb: MicroBatch) -> int:
    return int((mb.labels_S != IGNORE_INDEX).sum())


class TrainStep:
    """Forward/backward/step of one global batch on this rank.

    Args:
        engine: the DeepSpeed engine.
        dims: the parallel layout (data-parallel size, this rank's tensor-parallel rank).
        aux_loss_weight: model_cfg.stts.aux_loss_weight.
        device, float_dtype: where micro-batches go and the pixel dtype (bf16 runs).
    """

    def __init__(
        self,
        engine: Any,
        dims: ParallelDims,
        aux_loss_weight: float,
        device: torch.device,
        float_dtype: torch.dtype,
    ) -> None:
        self.engine, self.dims = engine, dims
        self.aux_loss_weight = aux_loss_weight
        self.device, self.float_dtype = device, float_dtype

    def _agree(
        self, microbatches: list[MicroBatch], stop_requested: bool
    ) -> tuple[int, int, int, bool]:
        """The step's one blocking collective: (global loss tokens, micro-batches per rank,
        global samples, stop) from every rank's local numbers."""
        # tensor-parallel peers hold the same batch: count it once per data-parallel rank
        once = 1.0 if self.dims.tp_rank == 0 else 0.0
        local_RV = torch.tensor(
            [
                once * sum(_count_loss_tokens(mb) for mb in microbatches),
                once * sum(mb.num_samples for mb in microbatches),
                float(len(microbatches)),
                float(stop_requested),
            ],
            dtype=torch.float64,
            device=self.device,
        )
        gathered = [torch.empty_like(local_RV) for _ in range(self.dims.world_size)]
        dist.all_gather(gathered, local_RV)
        all_RV = torch.stack(gathered).cpu()
        tokens, samples = all_RV[:, :2].sum(0).tolist()
        micro, stop = all_RV[:, 2:].max(0).values.tolist()
        return int(tokens), int(micro), int(samples), stop > 0

    def __call__(self, microbatches: list[MicroBatch], stop_requested: bool = False) -> StepResult:
        """Train one step; `stop_requested` (this rank's stop flag) is agreed with every rank in
        the step's collective and returned as `StepResult.stop`."""
        if not microbatches:
            raise ValueError("the data source returned no micro-batch for this step")
        dims, engine = self.dims, self.engine
        global_tokens, num_micro, global_samples, stop = self._agree(microbatches, stop_requested)
        norm = StepLoss(global_tokens, dims.dp, num_micro, self.aux_loss_weight)
        padded = list(microbatches) + [microbatches[-1]] * (num_micro - len(microbatches))

        # summed on the device in float64: one host sync after the step, not one per micro-batch
        ce_sum = aux_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        stats: dict[str, float] = {}
        t0 = time.perf_counter()
        engine.train()
        for i, mb in enumerate(padded):
            weight = 1.0 if i < len(microbatches) else 0.0
            mb = mb.to(self.device, self.float_dtype)
            engine.set_gradient_accumulation_boundary(i == num_micro - 1)
            out = engine(mb)
            engine.backward(norm.backward_loss(out, weight), scale_wrt_gas=False)
            if weight:
                ce_sum = ce_sum + out.ce_sum.detach().double()
                aux_sum = aux_sum + out.aux_loss.detach().double()
                for k, v in (out.stats or {}).items():
                    stats[k] = stats.get(k, 0.0) + float(v)
        lrs = {
            g.get("name", str(i)): float(g["lr"])
            for i, g in enumerate(engine.optimizer.param_groups)
        }
        engine.step()
        grad_norm = engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        ce_local, aux_local = float(ce_sum), float(aux_sum)
        if not math.isfinite(grad_norm):
            # global, so every rank raises here in the same step
            raise NonFiniteError(
                f"non-finite loss or gradient norm (grad norm {grad_norm}; this rank's CE sum "
                f"{ce_local}, aux sum {aux_local}); the run stops without writing a checkpoint "
                "(the last good checkpoint is intact); lower the LR, enable gradient clipping or "
                "check the data"
            )
        ce_share, aux_share = norm.shares(ce_local, aux_local)
        return StepResult(
            ce_share=ce_share,
            aux_share=aux_share,
            loss_share=ce_share + self.aux_loss_weight * aux_share,
            grad_norm=grad_norm,
            lr=lrs,
            num_microbatches=num_micro,
            loss_tokens=global_tokens,
            num_samples=global_samples,
            stop=stop,
            stats=stats,
            compute_s=time.perf_counter() - t0,
        )
