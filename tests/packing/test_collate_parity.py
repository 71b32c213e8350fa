"""A packed row gives the loss and gradients of its samples run one by one (fp32, STTS on).

The CE of every run is divided by the same global loss-token count (`StepLoss`, as in the
train step), so the packed CE term equals the sum of the one-by-one CE terms. The STTS temporal
loss is a mean over the prunable non-first frames of the micro-batch (`temporal_aux_loss`), so
the packed value is the one-by-one values weighted by each sample's count of such frames.
"""

from __future__ import annotations

import torch

from stts_train.data.collate import collate_row
from stts_train.train.loss import StepLoss


def _grads(model) -> dict[str, torch.Tensor]:
    return {
        n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
        for n, p in model.named_parameters()
    }


def test_packed_row_equals_one_by_one(tiny_model_cfg, make_sample):
    from stts_train.models.vlm import Molmo2VLM

    cfg = tiny_model_cfg
    assert cfg.stts.pruner == "stts" and cfg.stts.keep_ratio < 1.0 and cfg.stts.aux_loss_weight > 0
    samples = [
        make_sample(cfg, "video-a", [(2, 4)], prompt=5, answer=6, seed=11),
        make_sample(cfg, "text", [], prompt=7, answer=4, seed=12),
        make_sample(cfg, "image", [(1, 1)], prompt=3, answer=5, seed=13),
        make_sample(cfg, "video-b", [(2, 3), (1, 1)], prompt=4, answer=3, seed=14),
    ]
    total_loss_tokens = sum(s.meta.num_loss_tokens for s in samples) + 17  # other rows of the step
    torch.manual_seed(0)
    model = Molmo2VLM(cfg).float().train()

    # the packed row is the step's only micro-batch on its only rank
    step = StepLoss(total_loss_tokens, dp=1, microbatches=1, aux_weight=cfg.stts.aux_loss_weight)
    model.zero_grad()
    packed = model(collate_row(samples, cfg))
    packed_loss = step.microbatch_loss(packed)
    packed_loss.backward()
    packed_grads = _grads(model)

    groups = cfg.groups_per_frame
    weights = [
        sum((t - 1) * groups for m, t in zip(s.item_modality, s.item_frames) if m == 2)
        for s in samples
    ]
    model.zero_grad()
    ce_terms, aux_terms = [], []
    for s, w in zip(samples, weights):
        out = model(collate_row([s], cfg))
        ce_terms.append(out.ce_sum / total_loss_tokens)
        aux_terms.append(out.aux_loss * (w / sum(weights)))
    reference = sum(ce_terms) + cfg.stts.aux_loss_weight * sum(aux_terms)
    reference.backward()
    ref_grads = _grads(model)

    torch.testing.assert_close(
        packed.ce_sum, sum(t * total_loss_tokens for t in ce_terms), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(packed_loss, reference, rtol=1e-5, atol=1e-5)
    assert int(packed.num_loss_tokens) == sum(s.meta.num_loss_tokens for s in samples)
    nonzero = 0
    for name, g in packed_grads.items():
        torch.testing.assert_close(
            g, ref_grads[name], rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}"
        )
        nonzero += int(g.abs().sum() > 0)
    assert nonzero > len(packed_grads) // 2  # the comparison is not vacuous
    scorer = [g for n, g in packed_grads.items() if ".scorer." in f".{n}"]
    assert scorer and any(g.abs().sum() > 0 for g in scorer)  # STTS is on and trained
