"""One optimizer step through the DeepSpeed engine: the math, no loop bookkeeping.

Loss normalisation: the CE of every micro-batch is divided by the number of loss tokens of the
whole global batch (all data-parallel ranks, all micro-batches of the step), and the STTS aux
loss is averaged over all micro-batches of all ranks. DeepSpeed averages gradients over the
data-parallel group and we drive accumulation ourselves (`set_gradient_accumulation_boundary`,
no 1/gas scaling), so each micro-batch's backward loss is `dp * out.loss` with
`aux_scale = 1 / (dp * micro-batches)`. The resulting gradient equals that of one process
running the whole global batch.

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


class NonFiniteError(STTSError):
    """Loss or grad norm is NaN/inf; the run stops without writing a checkpoint."""


@dataclass
class StepResult:
    loss: float
    """Global loss: CE sum / global loss tokens + aux_weight * mean aux loss."""
    ce_loss: float
    aux_loss: float
    grad_norm: float
    lr: dict[str, float]
    num_microbatches: int
    loss_tokens: int
    stats: dict[str, float] = field(default_factory=dict)
    """Model stats summed over this rank's micro-batches."""
    compute_s: float = 0.0


def _count_loss_tokens(mb: MicroBatch) -> int:
    return int((mb.labels_S != IGNORE_INDEX).sum())


class TrainStep:
    """Forward/backward/step of one global batch on this rank.

    Args:
        engine: the DeepSpeed engine.
        dims: the parallel layout (data-parallel group for the reductions).
        aux_loss_weight: model_cfg.stts.aux_loss_weight (for the reported loss split).
        device, float_dtype: where micro-batches go and the pixel dtype (bf16 runs).
    """

    def __init__(
        self, engine: Any, dims: ParallelDims, aux_loss_weight: float, device: torch.device,
        float_dtype: torch.dtype,
    ) -> None:
        self.engine, self.dims = engine, dims
        self.aux_loss_weight = aux_loss_weight
        self.device, self.float_dtype = device, float_dtype

    def _reduce(self, values: list[float], op: dist.ReduceOp, group: Any) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=op, group=group)
        return t.tolist()

    def __call__(self, microbatches: list[MicroBatch]) -> StepResult:
        if not microbatches:
            raise ValueError("the data source returned no micro-batch for this step")
        dims, engine = self.dims, self.engine
        local_tokens = sum(_count_loss_tokens(mb) for mb in microbatches)
        # one reduction over the data-parallel group: loss tokens (sum), micro-batch count (max)
        (global_tokens,) = self._reduce([float(local_tokens)], dist.ReduceOp.SUM, dims.dp_group)
        (num_micro,) = self._reduce([float(len(microbatches))], dist.ReduceOp.MAX, None)
        num_micro = int(num_micro)
        global_tokens = max(global_tokens, 1.0)
        aux_scale = 1.0 / (dims.dp * num_micro)
        padded = list(microbatches) + [microbatches[-1]] * (num_micro - len(microbatches))

        ce_sum = aux_sum = 0.0
        stats: dict[str, float] = {}
        t0 = time.perf_counter()
        engine.train()
        for i, mb in enumerate(padded):
            weight = 1.0 if i < len(microbatches) else 0.0
            mb = mb.to(self.device, self.float_dtype)
            mb.num_loss_tokens = global_tokens
            engine.set_gradient_accumulation_boundary(i == num_micro - 1)
            out = engine(mb, aux_scale=aux_scale)
            engine.backward(out.loss * (dims.dp * weight), scale_wrt_gas=False)
            if weight:
                ce_sum += float(out.ce_sum.detach())
                aux_sum += float(out.aux_loss.detach())
                for k, v in (out.stats or {}).items():
                    stats[k] = stats.get(k, 0.0) + float(v)
        # agree on finiteness before the update: a NaN on any rank stops every rank
        ce_g, aux_g, bad = self._reduce(
            [ce_sum, aux_sum, 0.0 if math.isfinite(ce_sum + aux_sum) else 1.0],
            dist.ReduceOp.SUM, dims.dp_group,
        )
        if bad or not math.isfinite(ce_g + aux_g):
            raise NonFiniteError(
                f"non-finite loss (CE sum {ce_g}, aux sum {aux_g}) before the optimizer step; "
                "the step was not applied and no checkpoint was written; lower the LR or check the data"
            )
        lrs = {g.get("name", str(i)): float(g["lr"]) for i, g in enumerate(engine.optimizer.param_groups)}
        engine.step()
        grad_norm = engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        if not math.isfinite(grad_norm):
            raise NonFiniteError(
                f"non-finite gradient norm {grad_norm}; the run stops without writing a checkpoint "
                "(the last good checkpoint is intact); lower the LR or enable gradient clipping"
            )
        compute_s = time.perf_counter() - t0
        ce_loss = ce_g / global_tokens
        aux_mean = aux_g / (dims.dp * num_micro)
        return StepResult(
            loss=ce_loss + self.aux_loss_weight * aux_mean, ce_loss=ce_loss, aux_loss=aux_mean,
            grad_norm=grad_norm, lr=lrs, num_microbatches=num_micro,
            loss_tokens=int(global_tokens), stats=stats, compute_s=compute_s,
        )
