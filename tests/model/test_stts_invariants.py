"""The STTS invariants (docs/stts.md#tests), on the tiny model (fp32, CPU)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from stts_train.config.model import ModelConfig
from stts_train.constants import Modality
from stts_train.data.builders import make_batch
from stts_train.errors import LayoutError
from stts_train.models.vlm import Molmo2VLM
from stts_train.pruning.budget import kept_groups
from stts_train.pruning.stts import group_index, layout_from_items
from stts_train.train.loss import single_batch_loss

VIDEO, IMAGE = Modality.VIDEO, Modality.IMAGE


def with_stts(cfg: ModelConfig, **changes) -> ModelConfig:
    return dataclasses.replace(cfg, stts=dataclasses.replace(cfg.stts, **changes))


@pytest.fixture
def cfg(tiny_config) -> ModelConfig:
    return tiny_config.model


def build(cfg: ModelConfig, seed: int = 0) -> Molmo2VLM:
    torch.manual_seed(seed)
    return Molmo2VLM(cfg)


def test_budget_first_frame_and_images(cfg):
    model = build(cfg).eval()
    batch = make_batch(cfg, [[(VIDEO, 5), (IMAGE, 1)], [(VIDEO, 3)]])
    out = model(batch)
    g = cfg.groups_per_frame
    keep = out.keep_group_FG
    spans = [(0, 5, VIDEO), (5, 1, IMAGE), (6, 3, VIDEO)]
    for start, n, modality in spans:
        kept = int(keep[start : start + n].sum())
        if modality == VIDEO:
            assert kept == kept_groups(g, n, cfg.stts.keep_ratio) == g * n - (g * n) // 2
            assert bool(keep[start].all()), "frame 0 of a video is always kept"
        else:
            assert kept == g * n
    # Kept groups = connector outputs = kept placeholders in the LLM sequence.
    assert out.stats["image_tokens_kept"] == int(keep.sum())
    assert int((out.kept_input_ids == cfg.tokens.image_patch_id).sum()) == int(keep.sum())


def test_global_topk_order_and_score_range(cfg):
    model = build(cfg).eval()
    batch = make_batch(cfg, [[(VIDEO, 6)]], seed=4)
    out = model(batch)
    scores, keep = out.scores_FG, out.keep_group_FG
    assert bool(((scores > 0) & (scores < 1)).all())
    later_scores, later_keep = scores[1:], keep[1:]
    assert later_scores[~later_keep].max() <= later_scores[later_keep].min()


def test_soft_bias_range_and_first_frame(cfg):
    model = build(cfg).eval()
    batch = make_batch(cfg, [[(VIDEO, 4), (IMAGE, 1)]], seed=5)
    layout = model.frame_layout(batch)
    with torch.no_grad():
        x = model.vision.patch_embedding(batch.pixels_FNC) + model.vision.positional_embedding
        out = model.vision.forward_embedded(x, layout, return_debug=True)
    bias = out.debug["bias_FG"]
    assert bool((bias <= 0).all()) and bool((bias >= -2 - 1e-6).all())
    assert bool((bias[0] == 0).all()) and bool((bias[4] == 0).all()), (
        "first frame and image get bias exactly 0"
    )
    side = int(cfg.groups_per_frame**0.5)
    rows = bias[1:4].view(3, side, side)
    assert torch.allclose(rows.amin(-1), torch.full_like(rows.amin(-1), -2.0), atol=1e-4)
    # max is ln(m + (1 - m) * d / (d + 1e-6)) for row score range d: ~0 unless d is tiny
    scores = out.scores_FG[1:4].view(3, side, side)
    d = scores.amax(-1) - scores.amin(-1)
    m = cfg.stts.rescale_bias_min
    assert torch.allclose(rows.amax(-1), torch.log(m + (1 - m) * d / (d + 1e-6)), atol=1e-5)


def grads(model: Molmo2VLM) -> dict[str, float]:
    out = {}
    for name, p in model.named_parameters():
        out[name] = 0.0 if p.grad is None else float(p.grad.abs().sum())
    return out


def test_ce_gradient_reaches_scorer_only_with_prunable_frames(cfg):
    model = build(with_stts(cfg, aux_loss_weight=0.0)).train()
    weight = model.cfg.stts.aux_loss_weight
    single_batch_loss(model(make_batch(cfg, [[(VIDEO, 4)]], seed=6)), weight).backward()
    g = grads(model)
    assert sum(v for k, v in g.items() if k.startswith("vision.scorer.")) > 0
    model.zero_grad(set_to_none=True)
    images = make_batch(cfg, [[(IMAGE, 1)], [(IMAGE, 1)]], seed=6)
    single_batch_loss(model(images), weight).backward()
    g = grads(model)
    assert sum(v for k, v in g.items() if k.startswith("vision.scorer.")) == 0


def test_aux_gradient_paths(cfg):
    model = build(cfg).train()
    out = model(make_batch(cfg, [[(VIDEO, 4)]], seed=7))
    out.aux_loss.backward()
    g = grads(model)
    prune_at = cfg.stts.prune_at
    assert sum(v for k, v in g.items() if k.startswith("vision.scorer.")) > 0
    for i in range(cfg.vit.num_layers):
        block = sum(v for k, v in g.items() if k.startswith(f"vision.layers.{i}."))
        if i <= prune_at:
            assert block > 0, (
                f"block {i} <= prune_at gets aux gradient through the target and the scorer"
            )
        else:
            assert block == 0, f"block {i} > prune_at must get no aux gradient"
    assert all(v == 0 for k, v in g.items() if k.startswith(("llm.", "connector.")))


def test_aux_detached_target_stops_gradient_into_early_blocks_via_target(cfg):
    model = build(with_stts(cfg, detach_aux_target=True)).train()
    out = model(make_batch(cfg, [[(VIDEO, 4)]], seed=7))
    attached = build(cfg).train()
    out2 = attached(make_batch(cfg, [[(VIDEO, 4)]], seed=7))
    assert torch.allclose(out.aux_loss, out2.aux_loss)
    out.aux_loss.backward()
    out2.aux_loss.backward()
    g1 = model.vision.layers[0].mlp.fc1.weight.grad
    g2 = attached.vision.layers[0].mlp.fc1.weight.grad
    assert not torch.allclose(g1, g2), "detaching the target changes block-0 gradients"


def test_aux_loss_value_independent(cfg):
    model = build(cfg).train()
    batch = make_batch(cfg, [[(VIDEO, 4)], [(VIDEO, 3)]], seed=8)
    captured = {}
    hook = model.vision.layers[cfg.stts.prune_at].register_forward_hook(
        lambda m, i, o: captured.setdefault("h", o)
    )
    out = model(batch)
    hook.remove()
    hidden = captured["h"].detach().view(7, cfg.vit.num_patches, -1)
    scores = out.scores_FG.detach()
    gidx = group_index(cfg.vit.grid_size, cfg.connector.pool_size)
    total, count = 0.0, 0
    for start, n in ((0, 4), (4, 3)):
        for t in range(1, n):
            for p in range(gidx.shape[0]):
                a = hidden[start + t - 1, gidx[p]].reshape(-1)
                b = hidden[start + t, gidx[p]].reshape(-1)
                cos = float(F.cosine_similarity(a, b, dim=0))
                total += (float(scores[start + t, p]) - (1 - cos)) ** 2
                count += 1
    assert abs(float(out.aux_loss.detach()) - total / count) < 1e-5


def test_varlen_vit_equals_per_frame_reference(cfg):
    model = build(cfg).eval()
    batch = make_batch(cfg, [[(VIDEO, 5), (IMAGE, 1)]], seed=9)
    layout = model.frame_layout(batch)
    vit = model.vision
    with torch.no_grad():
        x = vit.patch_embedding(batch.pixels_FNC) + vit.positional_embedding
        out = vit.forward_embedded(x, layout, return_debug=True)
        dense = out.debug["hidden_bias_block_FND"]
        pieces = []
        for f in range(dense.shape[0]):
            tokens = dense[f][out.keep_patch_FN[f]]
            n = tokens.shape[0]
            cu = torch.tensor([0, n], dtype=torch.int32)
            for i in range(cfg.stts.prune_at + 2, cfg.vit.num_layers):
                tokens = vit.layers[i](tokens, cu, [n]) if n else tokens
            pieces.append(tokens)
    reference = torch.cat(pieces)
    assert torch.allclose(out.debug["hidden_last_KD"], reference, atol=1e-5)


def test_pruned_tokens_never_computed(cfg):
    model = build(cfg).eval()
    batch = make_batch(cfg, [[(VIDEO, 4)], [(IMAGE, 1)]], seed=10)
    layout = model.frame_layout(batch)
    with torch.no_grad():
        vis = model.vision(batch.pixels_FNC, layout)
    n = cfg.vit.num_patches
    kept = int(vis.keep_patch_FN.sum())
    dense_blocks = cfg.stts.prune_at + 2
    assert vis.block_tokens[:dense_blocks] == [5 * n] * dense_blocks
    assert vis.block_tokens[dense_blocks:] == [kept] * (cfg.vit.num_layers - dense_blocks)
    assert kept == (kept_groups(cfg.groups_per_frame, 4, 0.5) + cfg.groups_per_frame) * 9
    # LLM sees exactly the kept count: total tokens - pruned placeholders.
    out = model(batch)
    pruned = 4 * cfg.groups_per_frame - kept_groups(cfg.groups_per_frame, 4, 0.5)
    assert out.stats["llm_tokens"] == batch.input_ids_S.numel() - pruned


def test_batch_invariance(cfg):
    model = build(cfg).eval()
    alone = make_batch(cfg, [[(VIDEO, 4)]], seed=11)
    other = make_batch(cfg, [[(VIDEO, 3)], [(IMAGE, 1)]], seed=12)
    together = make_batch(
        cfg,
        [[(VIDEO, 3)], [(IMAGE, 1)], [(VIDEO, 4)]],
        seed=11,
        pixels_FNC=torch.cat([other.pixels_FNC, alone.pixels_FNC]),
    )
    with torch.no_grad():
        a = model.vision(alone.pixels_FNC, model.frame_layout(alone))
        t = model.vision(together.pixels_FNC, model.frame_layout(together))
    assert torch.equal(a.keep_group_FG, t.keep_group_FG[4:])
    k_other = int(t.keep_patch_FN[:4].sum())
    assert torch.allclose(a.features_KD, t.features_KD[k_other:], atol=1e-5)


def test_eval_is_deterministic_and_has_no_aux(cfg):
    model = build(cfg).eval()
    batch = make_batch(cfg, [[(VIDEO, 5)]], seed=13)
    with torch.no_grad():
        o1, o2 = model(batch), model(batch)
    assert torch.equal(o1.keep_group_FG, o2.keep_group_FG)
    assert float(o1.aux_loss) == 0.0


def test_keep_ratio_one_reproduces_unpruned_model(cfg):
    unpruned_cfg = with_stts(cfg, pruner="none")
    keep_all_cfg = with_stts(cfg, keep_ratio=1.0)
    keep_all = build(keep_all_cfg).eval()
    unpruned = Molmo2VLM(unpruned_cfg).eval()
    unpruned.load_state_dict(
        {k: v for k, v in keep_all.state_dict().items() if not k.startswith("vision.scorer.")}
    )
    batch = make_batch(cfg, [[(VIDEO, 4), (IMAGE, 1)], [(VIDEO, 2)]], seed=14)
    with torch.no_grad():
        a = keep_all(batch, return_logits=True).logits
        b = unpruned(batch, return_logits=True).logits
    assert torch.equal(a, b)


def test_text_only_batch_still_runs_every_module(cfg):
    model = build(cfg).train()
    out = model(make_batch(cfg, [[], []], seed=15))
    single_batch_loss(out, cfg.stts.aux_loss_weight).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient: ZeRO-3 would hang on a text-only rank"


def test_bad_inputs_get_clear_errors(cfg):
    model = build(cfg).eval()
    one_frame = make_batch(cfg, [[(VIDEO, 1)]])
    with pytest.raises(LayoutError, match="one-frame video"):
        model(one_frame)
    batch = make_batch(cfg, [[(VIDEO, 3)]])
    batch.input_ids_S = batch.input_ids_S[: -(cfg.groups_per_frame + 6)]
    batch.labels_S = batch.labels_S[: batch.input_ids_S.numel()]
    batch.cu_seqlens_B1 = torch.tensor([0, batch.input_ids_S.numel()], dtype=torch.int32)
    with pytest.raises(LayoutError, match="misalignment"):
        model(batch)
    with pytest.raises(LayoutError, match="keep_ratio"):
        layout_from_items([4], [VIDEO], 1.5, cfg.groups_per_frame)
