"""Property tests (hypothesis) for STTS budgets and selection."""

from __future__ import annotations

from fractions import Fraction

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stts_train.pruning.budget import kept_groups, pruned_groups
from stts_train.pruning.stts import layout_from_items, select_groups

items_strategy = st.lists(
    st.tuples(st.sampled_from([1, 2]), st.integers(min_value=2, max_value=9)),
    min_size=1,
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(
    groups=st.sampled_from([1, 4, 9, 81]),
    items=items_strategy,
    keep=st.sampled_from([0.1, 0.25, 0.3, 0.5, 0.7, 0.9, 1.0]),
    seed=st.integers(0, 2**16),
    ties=st.booleans(),
)
def test_selection_guarantees(groups, items, keep, seed, ties):
    frames = [n if m == 2 else 1 for m, n in items]
    modality = [m for m, _ in items]
    layout = layout_from_items(frames, modality, keep, groups)
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(sum(frames), groups, generator=gen)
    if ties:
        scores = (
            scores * 4
        ).floor() / 4  # many exact ties: the tie-break must still be deterministic
    keep_FG = select_groups(scores, layout)
    assert torch.equal(keep_FG, select_groups(scores.clone(), layout))
    start = 0
    for n, m in zip(frames, modality):
        block = keep_FG[start : start + n]
        if m == 2:
            assert int(block.sum()) == kept_groups(groups, n, keep)
            assert bool(block[0].all())
            rest_scores, rest_keep = scores[start + 1 : start + n], block[1:]
            if (~rest_keep).any() and rest_keep.any():
                assert rest_scores[~rest_keep].max() <= rest_scores[rest_keep].min()
        else:
            assert bool(block.all())
        start += n


@given(
    groups=st.integers(1, 200),
    frames=st.integers(2, 300),
    num=st.integers(1, 99),
    den=st.sampled_from([10, 100, 3, 7]),
)
def test_budget_is_exact_floor(groups, frames, num, den):
    keep = Fraction(num, den)
    if keep > 1:
        return
    keep_float = float(f"{float(keep):.6g}")
    rho = 1 - Fraction(repr(keep_float))
    expected = min((groups * frames * rho.numerator) // rho.denominator, groups * (frames - 1))
    assert pruned_groups(groups, frames, keep_float) == expected
    assert kept_groups(groups, frames, keep_float) == groups * frames - expected


def test_budget_known_values():
    assert kept_groups(81, 64, 0.5) == 2592
    assert kept_groups(81, 128, 0.5) == 5184
    assert kept_groups(81, 64, 0.7) == 3629
    # the float product 81 * 0.4 * 165 lands below 5346; the exact floor does not
    assert pruned_groups(81, 165, 0.6) == 5346
