"""The step loss: how the model's per-micro-batch sums become one optimizer step's objective.

The model returns sums and counts only (`VLMOutput.ce_sum`, `num_loss_tokens`, `aux_loss`); the
numbers that span the step (loss tokens of every data-parallel rank, micro-batches per rank) are
agreed by `train_step.TrainStep` in one collective before the first forward. The objective of a
step over the global batch (R data-parallel ranks, M micro-batches each) is

    L = sum_{r,m} ce_sum[r, m] / T  +  aux_weight * sum_{r,m} aux_loss[r, m] / (R * M)

with T the loss tokens of the whole step (at least 1): the token-mean CE of one process running
the whole global batch, plus the STTS aux loss averaged over every micro-batch of every rank.
Each micro-batch back-propagates its share of L (`StepLoss.microbatch_loss`), so accumulating
the gradients of all micro-batches on one rank and summing over ranks gives dL/dtheta.

DeepSpeed *averages* gradients over the data-parallel group, and `TrainStep` sets the
accumulation boundary itself with `scale_wrt_gas=False` (no 1/M scaling), so the loss handed to
`engine.backward` is the share times R (`StepLoss.backward_loss`). A rank that replays a
micro-batch to match the busiest rank's count (ZeRO reduces inside backward, so every rank must
run M backwards) passes weight 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class LossSums(Protocol):
    """What a model's forward returns for the loss (`models.vlm.VLMOutput` and the test models)."""

    ce_sum: torch.Tensor
    """Summed token cross-entropy over the micro-batch's loss tokens."""
    num_loss_tokens: torch.Tensor | int
    aux_loss: torch.Tensor
    """The STTS temporal aux loss of the micro-batch (a mean over its prunable frames)."""


@dataclass(frozen=True)
class StepLoss:
    """One step's normalisation (module doc).

    Args:
        loss_tokens: CE loss tokens of the whole step (all data-parallel ranks, all micro-batches).
        dp: data-parallel ranks R.
        microbatches: micro-batches per rank M (the busiest rank's count).
        aux_weight: `model.stts.aux_loss_weight`.
    """

    loss_tokens: int
    dp: int
    microbatches: int
    aux_weight: float

    @property
    def ce_divisor(self) -> float:
        return float(max(self.loss_tokens, 1))

    @property
    def aux_scale(self) -> float:
        """Weight of one micro-batch's aux loss in the step mean: 1 / (R * M)."""
        return 1.0 / (self.dp * self.microbatches)

    def microbatch_loss(self, out: LossSums) -> torch.Tensor:
        """This micro-batch's share of the step objective (the shares of all ranks sum to L)."""
        return out.ce_sum / self.ce_divisor + self.aux_weight * self.aux_scale * out.aux_loss

    def backward_loss(self, out: LossSums, weight: float = 1.0) -> torch.Tensor:
        """The loss to hand `engine.backward`: the share times R (DeepSpeed averages over R).

        A non-finite loss must show in the global gradient norm every rank reads after the
        update, even when its gradient is finite (an infinite CE has finite softmax gradients):
        the loss is multiplied by NaN then, and by exactly 1.0 otherwise (no host sync).
        """
        loss = self.microbatch_loss(out) * (self.dp * weight)
        finite = torch.isfinite(loss.detach())
        poison = torch.where(finite, loss.new_ones(()), loss.new_full((), float("nan")))
        return loss * poison

    def shares(self, ce_sum: float, aux_sum: float) -> tuple[float, float]:
        """This rank's shares of the step's CE loss and mean aux loss, from its summed CE and aux
        over the micro-batches it trained (summed over data-parallel ranks: the step's values)."""
        return ce_sum / self.ce_divisor, aux_sum / (self.dp * self.microbatches)


def single_batch_loss(out: LossSums, aux_weight: float) -> torch.Tensor:
    """The loss of one micro-batch trained on its own (one rank, one micro-batch): token-mean CE
    over its own loss tokens + aux_weight * its aux loss. Benchmarks and model tests use it."""
    tokens = out.num_loss_tokens
    divisor = tokens.clamp(min=1) if isinstance(tokens, torch.Tensor) else max(int(tokens), 1)
    return out.ce_sum / divisor + aux_weight * out.aux_loss
