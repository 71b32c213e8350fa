"""Packing planner: a window of ragged post-pruning samples -> the same number of dense rows
(micro-batches) per data-parallel rank, every sample used once, near-equal cost per rank.

The balanced planner (`plan_balanced`) returns a `Plan`: per rank a list of rows, each a list of
pool indices, and the pool indices carried over. Samples, not packs, are assigned straight to
the R*M rows of the step (R ranks, M rows per rank). Each row has a target in two dimensions,
the modelled ViT-side cost and the LLM-side cost (`stts_train.data.cost`), equal to the window's
total over the row count (times `target_scale`). Samples go in order of decreasing size (largest
share of a target first), each into the row whose current load is most orthogonal to it
(smallest dot product of load and sample, in target units) among the rows where it fits the LLM
token budget, the ViT patch budget and `1 + balance_tolerance` of both targets. Big samples
spread first; small ones (text-only, images) level the rows at the end. A forced sample that
fits no row within the tolerance only needs the budgets; any other is carried over. Rows are
then ordered into columns (micro-batch index) by cost and dealt to ranks in snake order; the
seed permutes ranks and breaks ties. O(n log n + n*R*M) with a vectorised inner step.
M is the fewest rows per rank that keep the mean row within `target_fill` of both budgets.
Rows are varlen (no padding), so an unused part of a budget costs no compute; only lockstep and
imbalance do.

Training plans every window whole (`plan_closed_window`: every sample forced, nothing carried,
so a checkpoint needs only the stream position at the window's start) and keeps samples on the
rank that decoded them where it can (`assign_window`). The streaming mode (carry-over, waiting
for a window large enough to balance) and the baselines it is measured against (pad to longest,
first-fit-decreasing, Molmo2's knapsack) live with the benchmark in
`stts_train/bench/planners.py`.

Oversized samples (more LLM tokens or ViT patches than one row's budget) raise `DataError`
naming the sample and the budget (`packing.oversize: error`); frames are capped upstream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from stts_train.config.packing import PackingConfig
from stts_train.data.cost import CostModel
from stts_train.data.lengths import SampleMeta, llm_tokens, vit_tokens_pre
from stts_train.errors import DataError


@dataclass
class PoolArrays:
    """Per-sample numbers the planners need, as arrays over the pool (carry first, then new)."""

    llm_tokens: np.ndarray
    vit_patches: np.ndarray
    frames: np.ndarray
    llm_cost: np.ndarray
    vit_cost: np.ndarray
    num_loss_tokens: np.ndarray
    keys: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.llm_tokens.shape[0])

    @classmethod
    def from_metas(cls, metas: list[SampleMeta], cost: CostModel) -> PoolArrays:
        geom = cost.geom
        n = len(metas)
        costs = [cost.sample_cost(m) for m in metas]
        return cls(
            llm_tokens=np.fromiter((llm_tokens(m, geom) for m in metas), np.int64, n),
            vit_patches=np.fromiter((vit_tokens_pre(m, geom) for m in metas), np.int64, n),
            frames=np.fromiter((m.num_frames for m in metas), np.int64, n),
            llm_cost=np.fromiter((c.llm for c in costs), np.float64, n),
            vit_cost=np.fromiter((c.vit for c in costs), np.float64, n),
            num_loss_tokens=np.fromiter((m.num_loss_tokens for m in metas), np.int64, n),
            keys=[m.key for m in metas],
        )

    def take(self, idx: list[int] | np.ndarray) -> PoolArrays:
        idx = np.asarray(idx, np.int64)
        return PoolArrays(
            llm_tokens=self.llm_tokens[idx],
            vit_patches=self.vit_patches[idx],
            frames=self.frames[idx],
            llm_cost=self.llm_cost[idx],
            vit_cost=self.vit_cost[idx],
            num_loss_tokens=self.num_loss_tokens[idx],
            keys=[self.keys[i] for i in idx.tolist()] if self.keys else [],
        )

    @staticmethod
    def concat(parts: list[PoolArrays]) -> PoolArrays:
        parts = [p for p in parts if len(p)] or parts[:1]
        return PoolArrays(
            **{
                name: np.concatenate([getattr(p, name) for p in parts])
                for name in (
                    "llm_tokens",
                    "vit_patches",
                    "frames",
                    "llm_cost",
                    "vit_cost",
                    "num_loss_tokens",
                )
            },
            keys=[k for p in parts for k in p.keys],
        )


@dataclass
class Plan:
    algorithm: str
    ranks: list[list[list[int]]]
    """ranks[r][j]: pool indices of row (micro-batch) j of data-parallel rank r. Every rank has
    the same number of rows; a row can be empty only when a tiny pool is flushed at the end of
    the stream (more rows than samples)."""
    carried_over: list[int]
    """Pool indices not placed in this window (they open the next one)."""

    @property
    def rows_per_rank(self) -> int:
        return len(self.ranks[0]) if self.ranks else 0

    def placed(self) -> list[int]:
        return [i for rank in self.ranks for row in rank for i in row]

    def global_loss_tokens(self, pool: PoolArrays) -> int:
        """Loss tokens of the whole step (all ranks, all rows): the CE denominator."""
        placed = self.placed()
        return int(pool.num_loss_tokens[placed].sum()) if placed else 0


def check_sizes(pool: PoolArrays, cfg: PackingConfig) -> None:
    """Raise DataError for the first sample that cannot fit one row (policy `oversize: error`)."""
    bad = np.flatnonzero(
        (pool.llm_tokens > cfg.max_llm_tokens) | (pool.vit_patches > cfg.max_vit_patches)
    )
    if bad.size:
        i = int(bad[0])
        key = pool.keys[i] if pool.keys else str(i)
        raise DataError(
            f"sample {key!r} needs {int(pool.llm_tokens[i])} LLM tokens and "
            f"{int(pool.vit_patches[i])} ViT patches ({int(pool.frames[i])} frames) but one "
            f"micro-batch holds packing.max_llm_tokens={cfg.max_llm_tokens} and "
            f"packing.max_vit_patches={cfg.max_vit_patches}; raise the budgets or lower "
            f"data.max_frames so every sample fits ({bad.size} sample(s) in this window are too "
            "large)"
        )


# ----------------------------------------------------------------------------------------------
def plan_balanced(
    pool: PoolArrays,
    num_ranks: int,
    cfg: PackingConfig,
    home: np.ndarray | None = None,
    *,
    forced: np.ndarray | None = None,
    wait_share: float | None = None,
) -> Plan:
    """The balanced planner (module docstring).

    `home` (the live loader): the rank already holding each sample; rows are then bound to ranks
    up front (rank r owns rows r*M..r*M+M-1) and a sample goes to a row of its home rank whenever
    one fits within the tolerance, so mostly the overflow of ranks holding more than their share
    moves, and overflow beyond every tolerance goes to the least-loaded rank. (Placing all home
    samples first moves fewer samples but measured 2x the imbalance and waste: the overflow then
    arrives big-first at ranks already filled small.)

    `forced[i]`: sample i is placed first and needs only the budgets (default: every sample).
    `wait_share` (streaming): when one row per rank is too small for the largest sample to take
    at most this share of a row's target, emit no rows and carry the whole pool (the window is
    too small to balance). None: always plan.
    """
    check_sizes(pool, cfg)
    n = len(pool)
    if n == 0:
        return Plan("balanced", [[] for _ in range(num_ranks)], [])
    tok = pool.llm_tokens.astype(np.float64)
    vit = pool.vit_patches.astype(np.float64)
    bl, bv = float(cfg.max_llm_tokens), float(cfg.max_vit_patches)
    cost = np.stack([pool.llm_cost, pool.vit_cost], axis=1)
    mass = cost.sum(axis=0)
    forced = np.ones(n, bool) if forced is None else np.asarray(forced, bool)
    limit = 1.0 + cfg.balance_tolerance

    # Rows per rank: the fewest that keep the mean row within `target_fill` of both budgets. If even
    # one row per rank is too small for the largest sample to take at most `wait_share` of a
    # row's target, the window is too small to balance: wait for more samples (all carried).
    rows_per_rank = cfg.rows_per_rank
    if rows_per_rank is None:
        rows_per_rank = max(
            1, math.ceil(max(tok.sum() / bl, vit.sum() / bv) / (num_ranks * cfg.target_fill))
        )
        largest = cost.max(axis=0)
        dims = (mass > 0) & (largest > 0)
        if dims.any() and wait_share is not None:
            most = np.floor(
                mass[dims] * cfg.target_scale * wait_share / (num_ranks * largest[dims])
            ).min()
            if most < 1:
                return Plan("balanced", [[] for _ in range(num_ranks)], list(range(n)))
    num_rows = num_ranks * rows_per_rank

    target = mass / num_rows * cfg.target_scale
    target[target <= 0] = 1.0
    norm = cost / target  # (n, 2) sample sizes in units of a row's target
    rng = np.random.default_rng(cfg.seed)
    # Forced first; visual samples before text-only ones (text levels the LLM side last), each
    # group in decreasing size.
    order = np.lexsort((rng.random(n), -norm.max(axis=1), pool.frames == 0, ~forced))

    load = np.zeros((num_rows, 2))
    row_tok = np.zeros(num_rows)
    row_vit = np.zeros(num_rows)
    row_of = np.full(n, -1, np.int64)
    norm_l, tok_l, vit_l, forced_l = norm.tolist(), tok.tolist(), vit.tolist(), forced.tolist()
    load0, load1 = load[:, 0], load[:, 1]
    row_rank = np.arange(num_rows) // rows_per_rank
    home_l = None if home is None else np.asarray(home).tolist()
    for i in order.tolist():
        a0, a1 = norm_l[i]
        ok = (row_tok <= bl - tok_l[i]) & (row_vit <= bv - vit_l[i])
        fit = ok & (load0 <= limit - a0) & (load1 <= limit - a1)
        if home_l is not None and (fit & (row_rank == home_l[i])).any():
            fit &= row_rank == home_l[i]
        if not fit.any():
            if not (forced_l[i] and ok.any()):
                continue  # carried over
            fit = ok
            if home_l is not None:
                # rows are bound to ranks, so overflow goes to the least-loaded rank that has room
                # (the home rank on a tie), then to that rank's least-loaded row
                per_rank = np.repeat(
                    (load0 * a0 + load1 * a1).reshape(num_ranks, rows_per_rank).sum(axis=1),
                    rows_per_rank,
                )
                per_rank[~ok] = np.inf
                fit = ok & (per_rank <= per_rank.min() * (1 + 1e-12))
                if (fit & (row_rank == home_l[i])).any():
                    fit &= row_rank == home_l[i]
        score = load0 * a0 + load1 * a1
        score[~fit] = np.inf
        r = int(score.argmin())
        load0[r] += a0
        load1[r] += a1
        row_tok[r] += tok_l[i]
        row_vit[r] += vit_l[i]
        row_of[i] = r

    # Columns: rows sorted by cost, R consecutive rows share a micro-batch index (similar sizes run
    # together); within a column rows are dealt to ranks in snake order to even out rank totals.
    row_cost = load0 * target[0] + load1 * target[1]
    by_cost = np.lexsort((rng.random(num_rows), -row_cost))
    rows_idx: list[list[int]] = [[] for _ in range(num_rows)]
    for i in np.flatnonzero(row_of >= 0).tolist():
        rows_idx[row_of[i]].append(i)
    if home is not None:  # rows stay on their ranks; each rank's rows by decreasing cost
        ranks = [
            [
                rows_idx[r]
                for r in sorted(
                    range(k * rows_per_rank, (k + 1) * rows_per_rank),
                    key=lambda r: (-row_cost[r], r),
                )
            ]
            for k in range(num_ranks)
        ]
        return Plan("balanced", ranks, np.flatnonzero(row_of < 0).tolist())
    perm = rng.permutation(num_ranks)
    ranks: list[list[list[int]]] = [[] for _ in range(num_ranks)]
    for col in range(rows_per_rank):
        chunk = by_cost[col * num_ranks : (col + 1) * num_ranks]
        if col % 2:
            chunk = chunk[::-1]
        for k, r in enumerate(chunk.tolist()):
            ranks[perm[k]].append(rows_idx[r])
    carried = np.flatnonzero(row_of < 0).tolist()
    return Plan("balanced", ranks, carried)


# ----------------------------------------------------------------------------------------------
# Live training: whole windows, samples kept near the rank that decoded them
def plan_closed_window(
    pool: PoolArrays, num_ranks: int, cfg: PackingConfig, home: list[int] | None = None
) -> Plan:
    """Balanced plan of one window that places every sample (nothing carried over).

    The live loader plans each window whole, so a checkpoint needs only the stream position at
    the window's start. Every sample counts as forced (it needs only the budgets; the balance
    tolerance is preferred, not required); if one still fits no row, the window is re-planned
    with one more row per rank. Trailing micro-batch columns left empty on every rank are dropped;
    a row can still be empty on some ranks when the window has fewer samples than rows. `home`:
    see `plan_balanced`.
    """
    if num_ranks < 1:
        raise ValueError(f"data-parallel size must be >= 1, got {num_ranks}")
    closed = cfg
    home_arr = None if home is None else np.asarray(home, np.int64)
    plan = plan_balanced(pool, num_ranks, closed, home_arr)
    while plan.carried_over:
        if plan.rows_per_rank * num_ranks >= len(pool):  # one sample per row always fits
            raise AssertionError(
                f"planner could not place {len(plan.carried_over)} samples in "
                f"{plan.rows_per_rank} rows"
            )
        closed = replace(closed, rows_per_rank=plan.rows_per_rank + 1)
        plan = plan_balanced(pool, num_ranks, closed, home_arr)
    columns = plan.rows_per_rank
    while columns and all(not rank[columns - 1] for rank in plan.ranks):
        columns -= 1
    return Plan(plan.algorithm, [rank[:columns] for rank in plan.ranks], [])


def relabel_for_locality(
    ranks: list[list[list[int]]], home: list[int], weight: list[float]
) -> list[list[list[int]]]:
    """Permute the plan's ranks so the most sample weight stays on the rank that already holds it.

    Rank costs are what the planner balanced, and they are unchanged by a permutation, so this
    only reduces what the loader has to move between ranks. `home[i]` is the rank holding pool
    sample i, `weight[i]` its transfer size. An optimal assignment on the (plan rank, home rank)
    weight matrix (Hungarian method); deterministic.
    """
    from scipy.optimize import linear_sum_assignment

    num_ranks = len(ranks)
    stays = np.zeros((num_ranks, num_ranks))
    for p, rank in enumerate(ranks):
        for row in rank:
            for i in row:
                stays[p, home[i]] += weight[i]
    plan_rank, home_rank = linear_sum_assignment(stays, maximize=True)
    out: list[list[list[int]]] = [[] for _ in range(num_ranks)]
    for p, h in zip(plan_rank.tolist(), home_rank.tolist()):
        out[h] = ranks[p]
    return out


def swap_for_locality(
    ranks: list[list[list[int]]], home: list[int], pool: PoolArrays, cfg: PackingConfig
) -> list[list[list[int]]]:
    """Swap pairs of near-equal samples between two ranks so both go back to the rank holding them.

    A swap exchanges sample i (planned on rank A, held by B) with sample j (planned on B, held by
    A) when both rows stay within the LLM token and ViT patch budgets and each rank's accumulated
    change in modelled cost stays within `balance_tolerance` of the mean rank cost in each stage
    (so the plan's imbalance grows by at most that much). Pairs of ranks in order, each sample
    matched to the closest partner in cost; deterministic.
    """
    num_ranks = len(ranks)
    out = [[list(row) for row in rank] for rank in ranks]
    if num_ranks < 2:
        return out
    cost = np.stack([pool.llm_cost, pool.vit_cost], axis=1)
    placed = [i for rank in out for row in rank for i in row]
    scale = cost[placed].sum(axis=0) / num_ranks
    scale[scale <= 0] = 1.0
    allowed = cfg.balance_tolerance
    drift = np.zeros((num_ranks, 2))  # per rank, change of its cost in units of `scale`
    row_of = {i: k for rank in out for k, row in enumerate(rank) for i in row}
    row_tok = [
        np.array([int(pool.llm_tokens[row].sum()) for row in rank], np.int64) for rank in out
    ]
    row_vit = [
        np.array([int(pool.vit_patches[row].sum()) for row in rank], np.int64) for rank in out
    ]
    for a in range(num_ranks):
        for b in range(a + 1, num_ranks):
            xs = [i for row in out[a] for i in row if home[i] == b]
            ys = np.asarray([j for row in out[b] for j in row if home[j] == a], np.int64)
            if not xs or not ys.size:
                continue
            ys_row = np.asarray([row_of[j] for j in ys.tolist()], np.int64)
            free = np.ones(ys.size, bool)
            for i in sorted(xs, key=lambda i: (-cost[i].sum(), i)):
                ka = row_of[i]
                delta = (cost[ys] - cost[i]) / scale  # change of rank a's cost if i <-> j
                d_tok = pool.llm_tokens[ys] - pool.llm_tokens[i]
                d_vit = pool.vit_patches[ys] - pool.vit_patches[i]
                ok = (
                    free
                    & (np.abs(drift[a] + delta) <= allowed).all(axis=1)
                    & (np.abs(drift[b] - delta) <= allowed).all(axis=1)
                    & (row_tok[a][ka] + d_tok <= cfg.max_llm_tokens)
                    & (row_vit[a][ka] + d_vit <= cfg.max_vit_patches)
                    & (row_tok[b][ys_row] - d_tok <= cfg.max_llm_tokens)
                    & (row_vit[b][ys_row] - d_vit <= cfg.max_vit_patches)
                )
                if not ok.any():
                    continue
                n = int(np.where(ok, np.abs(delta).max(axis=1), np.inf).argmin())
                j, kb = int(ys[n]), int(ys_row[n])
                out[a][ka] = sorted([x for x in out[a][ka] if x != i] + [j])
                out[b][kb] = sorted([x for x in out[b][kb] if x != j] + [i])
                row_tok[a][ka] += d_tok[n]
                row_vit[a][ka] += d_vit[n]
                row_tok[b][kb] -= d_tok[n]
                row_vit[b][kb] -= d_vit[n]
                drift[a] += delta[n]
                drift[b] -= delta[n]
                row_of[i], row_of[j] = kb, ka
                free[n] = False
    return out


def assign_window(
    pool: PoolArrays, home: list[int], num_ranks: int, cfg: PackingConfig
) -> list[list[list[int]]]:
    """Per rank, its rows (pool indices) for one window of the live loader; the same on every rank.

    `home[i]` is the rank that decoded pool sample i. With `packing.prefer_home_rank` the plan
    keeps samples on their home rank where the tolerance allows (`plan_closed_window` with
    `home`); otherwise it balances first and relabels whole ranks for locality, weighting each
    sample by its transfer size (~ frames). Either way near-equal samples planned on each other's
    ranks are then swapped back home (`swap_for_locality`).
    """
    if cfg.prefer_home_rank:
        ranks = plan_closed_window(pool, num_ranks, cfg, home=home).ranks
    else:
        weight = (1.0 + pool.frames.astype(np.float64)).tolist()
        ranks = relabel_for_locality(plan_closed_window(pool, num_ranks, cfg).ranks, home, weight)
    return swap_for_locality(ranks, home, pool, cfg)
