"""The step-loss math (`stts_train/train/loss.py`) on plain tensors: shares of every micro-batch
of every rank add up to the one-process objective, DeepSpeed's averaging is undone exactly, and
a non-finite loss always reaches the gradients."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stts_train.train.loss import StepLoss, single_batch_loss


@dataclass
class Sums:
    ce_sum: torch.Tensor
    num_loss_tokens: torch.Tensor
    aux_loss: torch.Tensor


def _sums(weight: torch.Tensor, x_NE: torch.Tensor, labels_N: torch.Tensor) -> Sums:
    logits_NV = x_NE @ weight
    keep_N = labels_N != -100
    ce = F.cross_entropy(logits_NV[keep_N], labels_N[keep_N], reduction="sum")
    return Sums(ce, keep_N.sum(), logits_NV.pow(2).mean())


def test_shares_of_all_ranks_and_microbatches_give_the_one_process_objective():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 5, generator=gen, requires_grad=True)
    dp, micro, aux_weight = 2, 3, 0.7
    batches = []
    for i in range(dp * micro):
        n = 3 + i
        labels = torch.randint(0, 5, (n,), generator=gen)
        labels[: i % 3] = -100  # uneven loss tokens per micro-batch
        batches.append((torch.randn(n, 4, generator=gen), labels))
    tokens = sum(int((labels != -100).sum()) for _, labels in batches)
    step = StepLoss(tokens, dp, micro, aux_weight)

    outs = [_sums(weight, x, labels) for x, labels in batches]
    expected = sum(o.ce_sum for o in outs) / tokens + aux_weight * sum(
        o.aux_loss for o in outs
    ) / len(outs)
    (grad_expected,) = torch.autograd.grad(expected, weight, retain_graph=True)

    # each rank back-propagates its micro-batches; DeepSpeed averages the ranks' gradients
    per_rank = [outs[r * micro : (r + 1) * micro] for r in range(dp)]
    grads = [
        torch.autograd.grad(sum(step.backward_loss(o) for o in rank), weight)[0]
        for rank in per_rank
    ]
    torch.testing.assert_close(sum(grads) / dp, grad_expected, rtol=1e-6, atol=1e-7)

    total = sum(step.microbatch_loss(o) for o in outs)
    torch.testing.assert_close(total, expected)
    ce_shares, aux_shares = zip(
        *(
            step.shares(
                sum(float(o.ce_sum.detach()) for o in rank),
                sum(float(o.aux_loss.detach()) for o in rank),
            )
            for rank in per_rank
        )
    )
    assert abs(sum(ce_shares) + aux_weight * sum(aux_shares) - float(expected.detach())) < 1e-6


def test_backward_loss_is_exact_when_finite_and_poisons_gradients_when_not():
    weight = torch.randn(4, 5, generator=torch.Generator().manual_seed(1), requires_grad=True)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2])
    step = StepLoss(loss_tokens=3, dp=2, microbatches=1, aux_weight=0.5)
    (plain,) = torch.autograd.grad(step.microbatch_loss(_sums(weight, x, labels)) * 2, weight)
    (poisoned,) = torch.autograd.grad(step.backward_loss(_sums(weight, x, labels)), weight)
    assert torch.equal(plain, poisoned)  # times exactly 1.0

    # an infinite CE (a -inf logit on the target) has finite gradients of its own
    masked = torch.zeros(5)
    masked[0] = float("-inf")
    out = _sums(weight, x, labels)
    inf = Sums(
        out.ce_sum + F.cross_entropy((x @ weight + masked)[:1], labels[:1], reduction="sum"),
        out.num_loss_tokens,
        out.aux_loss,
    )
    assert torch.isinf(inf.ce_sum)
    (finite,) = torch.autograd.grad(step.microbatch_loss(inf), weight, retain_graph=True)
    assert torch.isfinite(finite).all()
    (grad,) = torch.autograd.grad(step.backward_loss(inf), weight)
    assert torch.isnan(grad).all()


def test_single_batch_loss_is_the_token_mean_plus_weighted_aux():
    out = Sums(torch.tensor(6.0), torch.tensor(4), torch.tensor(0.5))
    assert abs(float(single_batch_loss(out, 0.2)) - (6.0 / 4 + 0.2 * 0.5)) < 1e-6
    empty = Sums(torch.tensor(0.0), torch.tensor(0), torch.tensor(0.5))
    assert float(single_batch_loss(empty, 1.0)) == 0.5  # no loss tokens: the divisor is 1
