"""Exact budgets per method, edge cases (short videos, all-static windows, ties), batch
invariance and the registry."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from pruner_test_helpers import video

from stts_train.errors import ConfigError, LayoutError
from stts_train.pruning.base import (
    KIND_COPY,
    KIND_MERGED,
    KIND_STATIC,
    Grid,
    PrunerInput,
    PrunerOutput,
    TokenPruner,
    available_pruners,
    get_pruner,
)
from stts_train.pruning.budget import kept_groups
from stts_train.pruning.training_free.fastvid import context_budget, segment_sizes
from stts_train.pruning.training_free.holitom import (
    adjacent_similarity_TN,
    rescaled_ratio,
    static_windows,
)

TRAINING_FREE = [
    "fastvid",
    "holitom",
    "random",
    "stop_fastvid",
    "stop_holitom",
    "stop_visionzip",
    "stts_easy",
    "stts_heuristic",
    "visionzip",
]


def _no_duplicate_tokens(out: PrunerOutput) -> bool:
    pairs = {(f, p) for f, p in zip(out.frame_M.tolist(), out.position_M.tolist())}
    return len(pairs) == out.num_tokens


# --- registry -------------------------------------------------------------------------------
def test_registry_names():
    assert available_pruners() == sorted([*TRAINING_FREE, "stts"])
    for name in TRAINING_FREE:
        p = get_pruner(name)
        assert isinstance(p, TokenPruner) and p.name == name


def test_stts_is_model_internal_and_unknown_names_are_clear():
    with pytest.raises(ConfigError, match="model.stts"):
        get_pruner("stts")
    with pytest.raises(ConfigError, match="unknown pruner 'tome'.*visionzip"):
        get_pruner("tome")
    with pytest.raises(ConfigError, match="bad parameters"):
        get_pruner("visionzip", budget=3)


def test_input_validation_names_the_field():
    x = torch.randn(4, 196, 8)
    with pytest.raises(LayoutError, match="attention_TN"):
        PrunerInput(x, torch.randn(4, 195))
    with pytest.raises(LayoutError, match="grid"):
        PrunerInput(x, grid=Grid(13, 13))
    with pytest.raises(LayoutError, match="features_TND"):
        PrunerInput(torch.randn(196, 8))
    with pytest.raises(LayoutError, match="attention_TN"):
        get_pruner("visionzip")(PrunerInput(x))


# --- exact budgets ----------------------------------------------------------------------------
@pytest.mark.parametrize("S", [1, 8, 20, 50, 196])
def test_visionzip_budget(S):
    for name, kw in [("visionzip", {}), ("stop_visionzip", {"sink_target_shift": False})]:
        out = get_pruner(name, budget_per_frame=S, **kw)(video(T=5, seed=S))
        d = int(S * 54 / 64)
        assert out.num_tokens == 5 * S
        assert torch.equal(out.tokens_per_frame_T(5), torch.full((5,), S))
        assert (out.kind_M == KIND_COPY).sum() == 5 * d
        assert (out.kind_M == KIND_MERGED).sum() == 5 * (S - d)
        assert _no_duplicate_tokens(out)
    # the reference's sink shift can push a target onto the next one when the stride is small
    quirky = get_pruner("stop_visionzip", budget_per_frame=S)(video(T=5, seed=S))
    assert quirky.num_tokens == 5 * S


@pytest.mark.parametrize("r, p", [(0.1, 4), (0.25, 2), (0.3, 3), (0.5, 4)])
def test_fastvid_budget(r, p):
    v = video(T=16, seed=3)
    for name in ("fastvid", "stop_fastvid"):
        pruner = get_pruner(name, retain_ratio=r, anchor_stride_p=p)
        out = pruner(v)
        R = int(196 * r)
        C = int(R * 0.4)
        S = R - C
        sizes = out.diagnostics["segment_sizes_S"].tolist()
        budget = out.diagnostics["context_budget_T"].tolist()
        assert sum(sizes) == 16 and budget == context_budget(sizes, C, p)
        expected = 16 * S
        start = 0
        for L in sizes:
            for k in budget[start : start + L]:
                if k == C:
                    expected += C
                elif k > C:
                    expected += min(budget[start + L - 1], 196 - S)
            start += L
        assert out.num_tokens == expected
        assert (out.kind_M == KIND_COPY).sum() == 16 * S
        flat = out.flat_index_M(196)
        assert torch.equal(flat, flat.sort().values) and _no_duplicate_tokens(out)


@pytest.mark.parametrize("r, tau", [(0.1, 0.8), (0.2, 0.65), (0.5, 0.9)])
def test_holitom_budget(r, tau):
    v = video(T=12, seed=7, static_fraction=0.6)
    for name in ("holitom", "stop_holitom"):
        out = get_pruner(name, retain_ratio=r, tau=tau)(v)
        windows = [tuple(w) for w in out.diagnostics["windows_W2"].tolist()]
        sim = adjacent_similarity_TN(v.features_TND)
        ref_windows, reduced = static_windows(sim, tau, 1024)
        assert windows == ref_windows
        assert windows[0][0] == 0 and windows[-1][1] == 11
        assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(windows))
        rp = rescaled_ratio(r, 12, 196, reduced)
        if name == "holitom":
            total = 0
            for s, e in windows:
                if s == e:
                    total += math.ceil(196 * rp)
                else:
                    m = int((sim[s:e] > tau).all(dim=0).sum())
                    total += round(m * rp) + (e - s + 1) * math.ceil((196 - m) * rp)
            assert out.num_tokens == total
        statics = out.kind_M == KIND_STATIC
        assert set(out.kind_M.tolist()) <= {KIND_COPY, KIND_STATIC}
        assert _no_duplicate_tokens(out)
        # static tokens carry their window's first frame
        starts = {s for s, e in windows if e > s}
        assert set(out.frame_M[statics].tolist()) <= starts


@pytest.mark.parametrize("r", [0.1, 0.3, 0.5, 0.7, 1.0])
def test_random_and_heuristic_budgets(r):
    v = video(T=6, rows=9, cols=9, seed=11)
    out = get_pruner("random", retain_ratio=r)(v)
    R = (81 * round(r * 10)) // 10
    assert torch.equal(out.tokens_per_frame_T(6), torch.full((6,), R))
    tot = get_pruner("random", retain_ratio=r, per_video_total=True)(v)
    assert tot.num_tokens == 6 * R and _no_duplicate_tokens(tot)
    for name in ("stts_easy", "stts_heuristic"):
        out = get_pruner(name, keep_ratio=r)(v)
        assert out.num_tokens == kept_groups(81, 6, r)
        assert out.tokens_per_frame_T(6)[0] == 81  # frame 0 never pruned
        assert _no_duplicate_tokens(out)


def test_keep_ratio_in_the_input_overrides_the_configured_budget():
    v = video(T=8, seed=2, keep_ratio=0.2)
    assert get_pruner("visionzip", budget_per_frame=20)(v).num_tokens == 8 * int(196 * 0.2)
    assert get_pruner("stts_easy", keep_ratio=0.9)(v).num_tokens == kept_groups(196, 8, 0.2)


# --- edge cases ---------------------------------------------------------------------------------
def test_fastvid_fewer_frames_than_segments():
    v = video(T=3, seed=5)
    sizes = segment_sizes(v.global_features_TG, 8, 0.9)
    assert sizes == [1, 1, 1]
    out = get_pruner("fastvid", segments_c=8)(v)
    R = int(196 * 0.1)
    assert out.num_tokens == 3 * R  # every frame is a single-frame segment
    with pytest.raises(LayoutError, match="segments_c=8"):
        get_pruner("fastvid", segments_c=8, strict_min_frames=True)(v)
    one = get_pruner("fastvid")(video(T=1, seed=5))
    assert one.num_tokens == R


def test_holitom_all_static_video_and_single_frame():
    g = torch.Generator().manual_seed(0)
    frame = torch.randn(196, 16, generator=g)
    x = frame[None].repeat(6, 1, 1) + 1e-4 * torch.randn(6, 196, 16, generator=g)
    att = torch.softmax(torch.randn(6, 196, generator=g), -1)
    for name in ("holitom", "stop_holitom"):
        out = get_pruner(name, retain_ratio=0.1)(PrunerInput(x, att))
        assert out.diagnostics["windows_W2"].tolist() == [[0, 5]]
        assert set(out.kind_M.tolist()) == {KIND_STATIC}  # no dynamic tokens left
        assert out.num_tokens == round(196 * min(0.1 / (196 / (6 * 196)), 1))
    single = get_pruner("holitom", retain_ratio=0.1)(PrunerInput(x[:1], att[:1]))
    assert single.num_tokens == math.ceil(196 * 0.1)


def test_holitom_window_size_one_means_no_merging():
    v = video(T=6, seed=1, static_fraction=0.9)
    out = get_pruner("holitom", max_window_size=1)(v)
    assert out.diagnostics["windows_W2"].tolist() == [[t, t] for t in range(6)]
    assert (out.kind_M == KIND_COPY).all()


def test_ties_in_attention_still_give_exact_budgets():
    x = torch.randn(8, 196, 16, generator=torch.Generator().manual_seed(4))
    flat = torch.full((8, 196), 1 / 729)
    for name, kw in [
        ("visionzip", {}),
        ("stop_visionzip", {}),
        ("fastvid", {}),
        ("stop_fastvid", {}),
        ("holitom", {}),
        ("stop_holitom", {}),
    ]:
        out = get_pruner(name, **kw)(PrunerInput(x, flat))
        assert _no_duplicate_tokens(out), name
        assert out.num_tokens > 0
    # identical features everywhere: novelty ties broken by flat index (stable)
    same = torch.ones(4, 81, 8)
    out = get_pruner("stts_easy", keep_ratio=0.5)(PrunerInput(same))
    assert out.num_tokens == kept_groups(81, 4, 0.5)
    pruned = sorted(set(range(4 * 81)) - set(out.flat_index_M(81).tolist()))
    assert pruned == list(range(81, 81 + len(pruned)))


def test_one_frame_video_cannot_be_pruned_by_stts_heuristics():
    with pytest.raises(LayoutError, match="one-frame"):
        get_pruner("stts_easy", keep_ratio=0.5)(video(T=1, rows=9, cols=9))


# --- batch invariance ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", TRAINING_FREE)
def test_batch_invariance(name):
    def make(seed, T):
        return video(T=T, seed=seed, generator=torch.Generator().manual_seed(100 + seed))

    pruner = get_pruner(name)
    alone = pruner(make(1, 9))
    batch = pruner.prune_batch([make(0, 12), make(1, 9), make(2, 8)])
    assert len(batch) == 3
    mine = batch[1]
    assert torch.equal(alone.features_MD, mine.features_MD)
    assert torch.equal(alone.frame_M, mine.frame_M)
    assert torch.equal(alone.position_M, mine.position_M)
    assert torch.equal(alone.kind_M, mine.kind_M)


def test_results_do_not_use_the_global_rng():
    v1 = video(T=8, seed=9)
    torch.manual_seed(0)
    a = get_pruner("random")(v1)
    torch.manual_seed(123)
    b = get_pruner("random")(video(T=8, seed=9))
    assert torch.equal(a.flat_index_M(196), b.flat_index_M(196))


def test_sorted_by_frame_position_is_a_stable_permutation():
    out = get_pruner("holitom")(video(T=8, seed=3))
    s = out.sorted_by_frame_position()
    key = s.flat_index_M(196)
    assert torch.all(key[1:] >= key[:-1])
    assert sorted(zip(out.frame_M.tolist(), out.position_M.tolist())) == list(
        zip(s.frame_M.tolist(), s.position_M.tolist())
    )
    assert s.num_tokens == out.num_tokens
