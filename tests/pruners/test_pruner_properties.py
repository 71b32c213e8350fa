"""Hypothesis property tests for the pruners and their building blocks."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stts_train.pruning.base import KIND_COPY, Grid, PrunerInput, get_pruner
from stts_train.pruning.budget import kept_groups
from stts_train.pruning.training_free.dpc import density_peak_score, pairwise_dist_BPP
from stts_train.pruning.training_free.holitom import holitom_inner_merge
from stts_train.pruning.training_free.stop import sink_score_N

FAST = settings(max_examples=30, deadline=None)
ratios = st.sampled_from([0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 0.7, 0.9, 1.0])


def _video(T, rows, cols, D, seed):
    g = torch.Generator().manual_seed(seed)
    N = rows * cols
    return PrunerInput(
        torch.randn(T, N, D, generator=g),
        torch.softmax(torch.randn(T, N, generator=g), -1),
        Grid(rows, cols),
        generator=torch.Generator().manual_seed(seed),
    )


def _is_sorted_unique(out, N):
    flat = out.flat_index_M(N)
    return bool(torch.all(flat[1:] > flat[:-1]))


@FAST
@given(
    T=st.integers(1, 10),
    rows=st.integers(1, 8),
    cols=st.integers(1, 8),
    r=ratios,
    per_video=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_pruner_budget_sorted_unique(T, rows, cols, r, per_video, seed):
    v = _video(T, rows, cols, 4, seed)
    N = rows * cols
    out = get_pruner("random", retain_ratio=r, per_video_total=per_video)(v)
    R = (N * round(r * 100)) // 100
    assert out.num_tokens == T * R
    if not per_video:
        assert torch.equal(out.tokens_per_frame_T(T), torch.full((T,), R))
    assert _is_sorted_unique(out, N)
    assert torch.equal(out.features_MD, v.features_TND[out.frame_M, out.position_M])
    assert bool((out.kind_M == KIND_COPY).all())


@FAST
@given(
    T=st.integers(2, 10),
    side=st.integers(2, 9),
    r=ratios,
    seed=st.integers(0, 2**16),
    name=st.sampled_from(["stts_easy", "stts_heuristic"]),
)
def test_heuristics_exact_budget_frame0_kept(T, side, r, seed, name):
    v = _video(T, side, side, 6, seed)
    N = side * side
    out = get_pruner(name, keep_ratio=r)(v)
    assert out.num_tokens == kept_groups(N, T, r)
    assert int(out.tokens_per_frame_T(T)[0]) == N
    assert _is_sorted_unique(out, N)


@FAST
@given(
    T=st.integers(1, 6),
    side=st.integers(3, 14),
    frac=st.floats(0.02, 1.0),
    seed=st.integers(0, 2**16),
)
def test_visionzip_layout(T, side, frac, seed):
    N = side * side
    S = max(1, int(N * frac))
    v = _video(T, side, side, 5, seed)
    out = get_pruner("visionzip", budget_per_frame=S)(v)
    d = int(S * 54 / 64)
    assert out.num_tokens == T * S
    pos_TS = out.position_M.view(T, S)
    assert torch.all(pos_TS[:, 1:d] > pos_TS[:, : d - 1]) if d > 1 else True
    copies = out.kind_M == KIND_COPY
    assert torch.equal(
        out.features_MD[copies], v.features_TND[out.frame_M[copies], out.position_M[copies]]
    )
    # dominant tokens are the top-d attention positions of their frame
    for t in range(T):
        top = set(torch.topk(v.attention_TN[t], d).indices.tolist())
        assert set(pos_TS[t, :d].tolist()) == top


@FAST
@given(B=st.integers(1, 3), P=st.integers(2, 12), k=st.integers(1, 12), seed=st.integers(0, 999))
def test_density_peak_score_matches_definition(B, P, k, seed):
    k = min(k, P)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, P, 3, generator=g)
    u = torch.rand(B, P, generator=g)
    dist = pairwise_dist_BPP(x)
    got = density_peak_score(dist, k, u)
    for b in range(B):
        rows = dist[b]
        rho = [
            float(torch.exp(-(rows[i].sort().values[:k] ** 2).mean()) + 1e-6 * u[b, i])
            for i in range(P)
        ]
        dmax = float(rows.max())
        for i in range(P):
            cands = [float(rows[i, j]) for j in range(P) if rho[j] > rho[i]]
            delta = min(cands) if cands else dmax
            assert abs(float(got[b, i]) - delta * rho[i]) < 1e-5


@FAST
@given(
    A=st.integers(0, 5),
    V=st.integers(1, 40),
    Z=st.integers(1, 5),
    r=st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.9]),
    seed=st.integers(0, 999),
)
def test_inner_merge_equals_sequential_running_average(A, V, Z, r, seed):
    g = torch.Generator().manual_seed(seed)
    L = A + V + Z
    h = torch.randn(L, 6, generator=g)
    att = torch.rand(L, generator=g)
    n_keep = round(V * (1 - r))
    if n_keep < 1:
        return
    out, pos = holitom_inner_merge(h, att, A, V, r)
    keep = (torch.topk(att[A : A + V], n_keep).indices + A).tolist()
    ref = h.clone()
    kn = torch.nn.functional.normalize(h[keep], dim=-1)
    for j in range(A, A + V):
        if j in keep:
            continue
        i = keep[int((torch.nn.functional.normalize(h[j], dim=0) @ kn.T).argmax())]
        ref[i] = (ref[i] + h[j]) / 2
    rows = sorted(set(range(L)) - set(range(A, A + V)) | set(keep))
    assert pos.tolist() == rows
    assert torch.equal(out, ref[rows])


@FAST
@given(
    T=st.integers(1, 8), N=st.integers(2, 50), gamma=st.floats(0.5, 2.0), seed=st.integers(0, 999)
)
def test_sink_score_range(T, N, gamma, seed):
    a = torch.rand(T, N, generator=torch.Generator().manual_seed(seed)) + 1e-3
    s = sink_score_N(a, gamma)
    assert s.shape == (N,)
    assert float(s.min()) >= 0 and float(s.max()) <= 1 + 1e-6
    assert int(s.argmax()) == int(a.mean(0).argmax())


@FAST
@given(
    T=st.integers(1, 12),
    r=st.sampled_from([0.1, 0.2, 0.5]),
    seed=st.integers(0, 999),
    name=st.sampled_from(["fastvid", "stop_fastvid", "holitom", "stop_holitom"]),
)
def test_temporal_pruners_keep_a_valid_layout(T, r, seed, name):
    v = _video(T, 7, 7, 8, seed)
    out = get_pruner(name, retain_ratio=r)(v)
    pairs = list(zip(out.frame_M.tolist(), out.position_M.tolist()))
    assert len(set(pairs)) == len(pairs)
    assert all(0 <= f < T and 0 <= p < 49 for f, p in pairs)
    assert torch.isfinite(out.features_MD).all()
    copies = out.kind_M == KIND_COPY
    assert torch.equal(
        out.features_MD[copies], v.features_TND[out.frame_M[copies], out.position_M[copies]]
    )
