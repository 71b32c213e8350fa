"""Packing planner: a window of ragged post-pruning samples -> the same number of dense rows
(micro-batches) per data-parallel rank, every sample used once, near-equal cost per rank.

Algorithms (all return a `Plan`: per rank a list of rows, each a list of pool indices, and the
pool indices carried over to the next window):

- `balanced` (ours): samples, not packs, are assigned straight to the R*M rows of the step
  (R ranks, M rows per rank). Each row has a target in two dimensions, the modelled ViT-side
  cost and the LLM-side cost (`stts_train.data.cost`), equal to the window's total over the
  row count (times `target_scale`). Samples go in order of decreasing size (largest share of a
  target first), each into the row whose current load is most orthogonal to it (smallest dot
  product of load and sample, in target units) among the rows where it fits the LLM token
  budget, the ViT patch budget and `1 + balance_tolerance` of both targets. Big samples spread
  first; small ones (text-only, images) level the rows at the end. A sample that fits no row is
  carried over; a sample carried `max_carry_windows` times goes first and only needs the
  budgets. Rows are then ordered into columns (micro-batch index) by cost and dealt to ranks in
  snake order; the seed permutes ranks and breaks ties. O(n log n + n*R*M) with a vectorised
  inner step.
  M is the fewest rows per rank that keep the mean row within `target_fill` of both budgets.
  Balance needs every rank's share of the window to be at least the largest sample (one
  256-frame video costs more than 8 average samples): when the pool is too small for that, the
  planner emits no rows and carries the whole pool into the next window (a step is sized in
  work, not in samples; waiting does not age samples; `flush=True` at the end of the stream).
  Rows are varlen (no padding), so an unused part of a budget costs no compute; only lockstep
  and imbalance do.
- `pad_to_longest`: stream order, each micro-batch padded to its longest sample (LLM) and its
  largest frame count (ViT), micro-batches dealt round-robin to ranks.
- `ffd`: first-fit-decreasing packing by LLM tokens under both budgets, then packs dealt
  round-robin to ranks (pack-then-assign, as Megatron-LM / torchtitan).
- `knapsack`: Molmo2's dynamic packer (docs/stts.md#packing): a buffer of `knapsack_buffer`
  samples, a 0/1 knapsack per row over (quantised LLM tokens, frames) maximising
  tokens + w * frames, rows dealt round-robin to ranks.
Every algorithm gives each rank the same number of rows; rows that would make the count uneven
are carried over (their samples return to the next window), never dropped.

Oversized samples (more LLM tokens or ViT patches than one row's budget) raise `DataError`
naming the sample and the budget (`packing.oversize: error`); frames are capped upstream.

Metrics (`plan_metrics`), in modelled cost:
- padding_waste_llm / padding_waste_vit: 1 - useful work / work paid for in that stage. The ranks
  run micro-batch j together (ZeRO-3 gathers every layer's weights per micro-batch, so a rank
  with a smaller row waits): every rank pays for the largest row at index j, plus the padded
  slots inside a row for `pad_to_longest` (padding tokens, padding frames).
- imbalance: max rank cost / mean rank cost - 1 (a rank's own rows, padding included).
- padding_waste_llm_tokens / padding_waste_vit_patches: the same lockstep waste counted in LLM
  tokens and ViT patches instead of cost (rows equal in cost differ in tokens when their
  segment lengths differ, since attention is quadratic).
- fill_llm / fill_vit: tokens (patches) used / (rows * budget), for reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from stts_train.config.packing import PackingConfig
from stts_train.data.cost import CostModel
from stts_train.data.lengths import SampleMeta, llm_tokens, vit_tokens_pre
from stts_train.errors import DataError

ALGORITHMS = ("balanced", "pad_to_longest", "ffd", "knapsack")


@dataclass
class PoolArrays:
    """Per-sample numbers the planners need, as arrays over the pool (carry first, then new)."""

    llm_tokens: np.ndarray
    vit_patches: np.ndarray
    frames: np.ndarray
    llm_cost: np.ndarray
    vit_cost: np.ndarray
    num_loss_tokens: np.ndarray
    age: np.ndarray
    """Windows each sample has already been carried over."""
    keys: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.llm_tokens.shape[0])

    @classmethod
    def from_metas(cls, metas: list[SampleMeta], cost: CostModel, ages: list[int] | None = None) -> PoolArrays:
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
            age=np.zeros(n, np.int64) if ages is None else np.asarray(ages, np.int64),
            keys=[m.key for m in metas],
        )

    def take(self, idx: list[int] | np.ndarray) -> PoolArrays:
        idx = np.asarray(idx, np.int64)
        return PoolArrays(
            llm_tokens=self.llm_tokens[idx], vit_patches=self.vit_patches[idx], frames=self.frames[idx],
            llm_cost=self.llm_cost[idx], vit_cost=self.vit_cost[idx],
            num_loss_tokens=self.num_loss_tokens[idx], age=self.age[idx],
            keys=[self.keys[i] for i in idx.tolist()] if self.keys else [],
        )

    @staticmethod
    def concat(parts: list[PoolArrays]) -> PoolArrays:
        parts = [p for p in parts if len(p)] or parts[:1]
        return PoolArrays(
            **{name: np.concatenate([getattr(p, name) for p in parts]) for name in
               ("llm_tokens", "vit_patches", "frames", "llm_cost", "vit_cost", "num_loss_tokens", "age")},
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
    padded: bool = False
    """Rows are padded to their longest sample (pad_to_longest) instead of packed varlen."""

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
    bad = np.flatnonzero((pool.llm_tokens > cfg.max_llm_tokens) | (pool.vit_patches > cfg.max_vit_patches))
    if bad.size:
        i = int(bad[0])
        key = pool.keys[i] if pool.keys else str(i)
        raise DataError(
            f"sample {key!r} needs {int(pool.llm_tokens[i])} LLM tokens and {int(pool.vit_patches[i])} ViT "
            f"patches ({int(pool.frames[i])} frames) but one micro-batch holds packing.max_llm_tokens="
            f"{cfg.max_llm_tokens} and packing.max_vit_patches={cfg.max_vit_patches}; raise the budgets or "
            f"lower data.max_frames so every sample fits ({bad.size} sample(s) in this window are too large)"
        )


def _deal(rows: list[list[int]], num_ranks: int) -> tuple[list[list[list[int]]], list[int]]:
    """Round-robin rows to ranks (row k -> rank k % R); rows beyond a full round are carried."""
    usable = (len(rows) // num_ranks) * num_ranks
    ranks: list[list[list[int]]] = [[] for _ in range(num_ranks)]
    for k in range(usable):
        ranks[k % num_ranks].append(sorted(rows[k]))
    carried = sorted(i for row in rows[usable:] for i in row)
    return ranks, carried


# ----------------------------------------------------------------------------------------------
# Ours
def plan_balanced(pool: PoolArrays, num_ranks: int, cfg: PackingConfig, flush: bool = False,
                  home: np.ndarray | None = None) -> Plan:
    """Ours (module docstring). `flush` (end of the stream): plan even if the pool is too small
    to balance its largest sample. `home` (the live loader): the rank already holding each
    sample; rows are then bound to ranks up front (rank r owns rows r*M..r*M+M-1) and a sample
    goes to a row of its home rank whenever one fits within the tolerance, so mostly the overflow
    of ranks holding more than their share moves, and overflow beyond every tolerance goes to the
    least-loaded rank. (Placing all home samples first moves fewer samples but measured 2x the
    imbalance and waste: the overflow then arrives big-first at ranks already filled small.)"""
    check_sizes(pool, cfg)
    n = len(pool)
    if n == 0:
        return Plan("balanced", [[] for _ in range(num_ranks)], [])
    tok = pool.llm_tokens.astype(np.float64)
    vit = pool.vit_patches.astype(np.float64)
    bl, bv = float(cfg.max_llm_tokens), float(cfg.max_vit_patches)
    cost = np.stack([pool.llm_cost, pool.vit_cost], axis=1)
    mass = cost.sum(axis=0)
    forced = pool.age >= cfg.max_carry_windows
    limit = 1.0 + cfg.balance_tolerance

    # Rows per rank: the fewest that keep the mean row within `target_fill` of both budgets. If even
    # one row per rank is too small for the largest sample to take at most `largest_share` of a
    # row's target, the window is too small to balance: wait for more samples (all carried).
    rows_per_rank = cfg.rows_per_rank
    if rows_per_rank is None:
        rows_per_rank = max(1, math.ceil(max(tok.sum() / bl, vit.sum() / bv) / (num_ranks * cfg.target_fill)))
        largest = cost.max(axis=0)
        dims = (mass > 0) & (largest > 0)
        if dims.any() and not flush:
            most = np.floor(mass[dims] * cfg.target_scale * cfg.largest_share
                            / (num_ranks * largest[dims])).min()
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
                per_rank = np.repeat((load0 * a0 + load1 * a1).reshape(num_ranks, rows_per_rank).sum(axis=1),
                                     rows_per_rank)
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
        ranks = [[rows_idx[r] for r in sorted(range(k * rows_per_rank, (k + 1) * rows_per_rank),
                                                  key=lambda r: (-row_cost[r], r))] for k in range(num_ranks)]
        return Plan("balanced", ranks, np.flatnonzero(row_of < 0).tolist())
    perm = rng.permutation(num_ranks)
    ranks: list[list[list[int]]] = [[] for _ in range(num_ranks)]
    for col in range(rows_per_rank):
        chunk = by_cost[col * num_ranks:(col + 1) * num_ranks]
        if col % 2:
            chunk = chunk[::-1]
        for k, r in enumerate(chunk.tolist()):
            ranks[perm[k]].append(rows_idx[r])
    carried = np.flatnonzero(row_of < 0).tolist()
    return Plan("balanced", ranks, carried)


# ----------------------------------------------------------------------------------------------
# Baselines
def plan_pad_to_longest(pool: PoolArrays, num_ranks: int, cfg: PackingConfig, patches_per_frame: int) -> Plan:
    check_sizes(pool, cfg)
    rows: list[list[int]] = []
    cur: list[int] = []
    max_tok = max_frames = 0
    cap_b = cfg.pad_micro_batch_size or 1 << 30
    for i in range(len(pool)):
        t, f = int(pool.llm_tokens[i]), int(pool.frames[i])
        nt, nf = max(max_tok, t), max(max_frames, f)
        b = len(cur) + 1
        if cur and (b > cap_b or b * nt > cfg.max_llm_tokens or b * nf * patches_per_frame > cfg.max_vit_patches):
            rows.append(cur)
            cur, nt, nf = [], t, f
        cur.append(i)
        max_tok, max_frames = nt, nf
    if cur:
        rows.append(cur)
    ranks, carried = _deal(rows, num_ranks)
    return Plan("pad_to_longest", ranks, carried, padded=True)


def plan_ffd(pool: PoolArrays, num_ranks: int, cfg: PackingConfig) -> Plan:
    check_sizes(pool, cfg)
    order = np.lexsort((np.arange(len(pool)), -pool.llm_tokens))
    bins: list[list[int]] = []
    used_tok: list[int] = []
    used_vit: list[int] = []
    for i in order.tolist():
        t, v = int(pool.llm_tokens[i]), int(pool.vit_patches[i])
        for b in range(len(bins)):
            if used_tok[b] + t <= cfg.max_llm_tokens and used_vit[b] + v <= cfg.max_vit_patches:
                bins[b].append(i)
                used_tok[b] += t
                used_vit[b] += v
                break
        else:
            bins.append([i])
            used_tok.append(t)
            used_vit.append(v)
    ranks, carried = _deal(bins, num_ranks)
    return Plan("ffd", ranks, carried)


def _knapsack_row(weights_q: np.ndarray, frames: np.ndarray, values: np.ndarray, cap_q: int, cap_f: int) -> list[int]:
    """0/1 knapsack over two integer capacities; returns chosen item positions."""
    value = np.zeros((cap_q + 1, cap_f + 1), np.float32)
    takes = []
    for q, f, v in zip(weights_q.tolist(), frames.tolist(), values.tolist()):
        take = np.zeros_like(value, dtype=bool)
        if q <= cap_q and f <= cap_f:
            cand = value[: cap_q + 1 - q, : cap_f + 1 - f] + v
            sub = value[q:, f:]
            better = cand > sub
            take[q:, f:] = better
            value = value.copy()
            value[q:, f:] = np.where(better, cand, sub)
        takes.append(take)
    chosen = []
    cq, cf = cap_q, cap_f
    for k in range(len(takes) - 1, -1, -1):
        if takes[k][cq, cf]:
            chosen.append(k)
            cq -= int(weights_q[k])
            cf -= int(frames[k])
    return chosen[::-1]


def plan_knapsack(pool: PoolArrays, num_ranks: int, cfg: PackingConfig, patches_per_frame: int) -> Plan:
    check_sizes(pool, cfg)
    steps = cfg.knapsack_token_steps
    max_frames = cfg.max_vit_patches // patches_per_frame
    cap_f = min(max_frames, cfg.knapsack_frame_steps)
    # Sizes rounded up to their quantum, so a chosen row never exceeds either budget.
    weights_q = np.ceil(pool.llm_tokens * steps / cfg.max_llm_tokens).astype(np.int64)
    frames_q = np.ceil(pool.frames * cap_f / max_frames).astype(np.int64)
    values = pool.llm_tokens + cfg.knapsack_image_weight * pool.frames
    stream = list(range(len(pool)))
    buffer: list[int] = []
    pos = 0
    rows: list[list[int]] = []
    while True:
        while len(buffer) < cfg.knapsack_buffer and pos < len(stream):
            buffer.append(stream[pos])
            pos += 1
        if pos >= len(stream) and len(buffer) < cfg.knapsack_buffer:
            break  # stream exhausted: the partial buffer waits for the next window
        b = np.asarray(buffer)
        chosen = _knapsack_row(weights_q[b], frames_q[b], values[b], steps, cap_f)
        if not chosen:
            break
        rows.append([buffer[k] for k in chosen])
        keep = set(chosen)
        buffer = [x for k, x in enumerate(buffer) if k not in keep]
    ranks, carried = _deal(rows, num_ranks)
    carried = sorted(carried + buffer)
    return Plan("knapsack", ranks, carried)


def plan_window(pool: PoolArrays, num_ranks: int, cfg: PackingConfig, patches_per_frame: int,
                algorithm: str | None = None, flush: bool = False) -> Plan:
    algorithm = algorithm or cfg.algorithm
    if num_ranks < 1:
        raise ValueError(f"data-parallel size must be >= 1, got {num_ranks}")
    if algorithm == "balanced":
        return plan_balanced(pool, num_ranks, cfg, flush=flush)
    if algorithm == "pad_to_longest":
        return plan_pad_to_longest(pool, num_ranks, cfg, patches_per_frame)
    if algorithm == "ffd":
        return plan_ffd(pool, num_ranks, cfg)
    if algorithm == "knapsack":
        return plan_knapsack(pool, num_ranks, cfg, patches_per_frame)
    raise ValueError(f"packing.algorithm={algorithm!r} is not one of {list(ALGORITHMS)}")


# ----------------------------------------------------------------------------------------------
# Live training: whole windows, samples kept near the rank that decoded them
def plan_closed_window(pool: PoolArrays, num_ranks: int, cfg: PackingConfig, home: list[int] | None = None) -> Plan:
    """Balanced plan of one window that places every sample (nothing carried over); always the
    balanced planner, whatever `cfg.algorithm` says.

    The live loader plans each window whole, so a checkpoint needs only the stream position at
    the window's start. Every sample counts as forced (it needs only the budgets; the balance
    tolerance is preferred, not required); if one still fits no row, the window is re-planned
    with one more row per rank. Trailing micro-batch columns left empty on every rank are dropped;
    a row can still be empty on some ranks when the window has fewer samples than rows. `home`:
    see `plan_balanced`.
    """
    overdue = pool.take(np.arange(len(pool)))
    overdue.age = np.full(len(pool), cfg.max_carry_windows, dtype=pool.age.dtype)
    closed = cfg
    home_arr = None if home is None else np.asarray(home, np.int64)
    plan = plan_balanced(overdue, num_ranks, closed, flush=True, home=home_arr)
    while plan.carried_over:
        if plan.rows_per_rank * num_ranks >= len(pool):  # one sample per row always fits
            raise AssertionError(f"planner could not place {len(plan.carried_over)} samples in {plan.rows_per_rank} rows")
        closed = replace(closed, rows_per_rank=plan.rows_per_rank + 1)
        plan = plan_balanced(overdue, num_ranks, closed, flush=True, home=home_arr)
    columns = plan.rows_per_rank
    while columns and all(not rank[columns - 1] for rank in plan.ranks):
        columns -= 1
    return Plan(plan.algorithm, [rank[:columns] for rank in plan.ranks], [])


def relabel_for_locality(ranks: list[list[list[int]]], home: list[int], weight: list[float]) -> list[list[list[int]]]:
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


def swap_for_locality(ranks: list[list[list[int]]], home: list[int], pool: PoolArrays,
                      cfg: PackingConfig) -> list[list[list[int]]]:
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
    row_tok = [np.array([int(pool.llm_tokens[row].sum()) for row in rank], np.int64) for rank in out]
    row_vit = [np.array([int(pool.vit_patches[row].sum()) for row in rank], np.int64) for rank in out]
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
                ok = (free & (np.abs(drift[a] + delta) <= allowed).all(axis=1)
                      & (np.abs(drift[b] - delta) <= allowed).all(axis=1)
                      & (row_tok[a][ka] + d_tok <= cfg.max_llm_tokens) & (row_vit[a][ka] + d_vit <= cfg.max_vit_patches)
                      & (row_tok[b][ys_row] - d_tok <= cfg.max_llm_tokens)
                      & (row_vit[b][ys_row] - d_vit <= cfg.max_vit_patches))
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


# ----------------------------------------------------------------------------------------------
def plan_metrics(plan: Plan, pool: PoolArrays, cost: CostModel, cfg: PackingConfig) -> dict[str, float] | None:
    """Waste, imbalance and fill of one window's plan (None if it emitted no rows)."""
    num_ranks, m = len(plan.ranks), plan.rows_per_rank
    if m == 0:
        return None
    real_llm = np.zeros((num_ranks, m))
    real_vit = np.zeros((num_ranks, m))
    paid_llm = np.zeros((num_ranks, m))
    paid_vit = np.zeros((num_ranks, m))
    tok = np.zeros((num_ranks, m))
    pat = np.zeros((num_ranks, m))
    paid_tok = np.zeros((num_ranks, m))
    paid_pat = np.zeros((num_ranks, m))
    pad_frame = cost.padding_frame_cost() if plan.padded else 0.0
    ppf = cost.geom.patches_per_frame
    for r, rows in enumerate(plan.ranks):
        for j, row in enumerate(rows):
            idx = np.asarray(row, np.int64)
            real_llm[r, j] = pool.llm_cost[idx].sum()
            real_vit[r, j] = pool.vit_cost[idx].sum()
            tok[r, j] = pool.llm_tokens[idx].sum()
            pat[r, j] = pool.vit_patches[idx].sum()
            paid_llm[r, j], paid_vit[r, j], paid_tok[r, j], paid_pat[r, j] = (
                real_llm[r, j], real_vit[r, j], tok[r, j], pat[r, j])
            if plan.padded and idx.size:
                lens = pool.llm_tokens[idx]
                pad_frames = idx.size * int(pool.frames[idx].max()) - int(pool.frames[idx].sum())
                paid_llm[r, j] += (idx.size * cost.llm_cost_of_length(float(lens.max()))
                                   - cost.llm_cost_of_length(lens.astype(float)).sum())
                paid_vit[r, j] += pad_frames * pad_frame
                paid_tok[r, j] = idx.size * lens.max()
                paid_pat[r, j] += pad_frames * ppf

    def lockstep_waste(real: np.ndarray, paid: np.ndarray) -> float:
        total = (paid.max(axis=0) * num_ranks).sum()
        return float(1 - real.sum() / total) if total > 0 else 0.0

    rank_cost = (paid_llm + paid_vit).sum(axis=1)
    rows = num_ranks * m
    return {
        "padding_waste_llm": lockstep_waste(real_llm, paid_llm),
        "padding_waste_vit": lockstep_waste(real_vit, paid_vit),
        "padding_waste_llm_tokens": lockstep_waste(tok, paid_tok),
        "padding_waste_vit_patches": lockstep_waste(pat, paid_pat),
        "imbalance": float(rank_cost.max() / rank_cost.mean() - 1) if rank_cost.mean() > 0 else 0.0,
        "fill_llm": float(tok.sum() / (rows * cfg.max_llm_tokens)),
        "fill_vit": float(pat.sum() / (rows * cfg.max_vit_patches)),
        "rows_per_rank": m,
        "samples": len(plan.placed()),
        "carried_over": len(plan.carried_over),
    }


class StreamingPlanner:
    """Windows in, plans out; carried-over samples open the next window (never dropped)."""

    def __init__(self, cfg: PackingConfig, cost: CostModel, num_ranks: int, algorithm: str | None = None):
        self.cfg, self.cost, self.num_ranks = cfg, cost, num_ranks
        self.algorithm = algorithm or cfg.algorithm
        self.carry_metas: list[SampleMeta] = []
        self.carry = PoolArrays.from_metas([], cost)

    def plan(self, new: list[SampleMeta], new_arrays: PoolArrays | None = None,
             flush: bool = False) -> tuple[Plan, list[SampleMeta], PoolArrays]:
        """Plan carry + `new`; returns (plan, pool metas, pool arrays) with plan indices into the pool.
        A plan may have no rows (the balanced planner waits for a window large enough to balance);
        pass `flush=True` at the end of the stream."""
        arrays = new_arrays if new_arrays is not None else PoolArrays.from_metas(new, self.cost)
        pool_metas = self.carry_metas + list(new)
        pool = PoolArrays.concat([self.carry, arrays])
        plan = plan_window(pool, self.num_ranks, self.cfg, self.cost.geom.patches_per_frame, self.algorithm, flush)
        self.carry_metas = [pool_metas[i] for i in plan.carried_over]
        self.carry = pool.take(plan.carried_over)
        if plan.rows_per_rank:  # waiting for a larger window does not age samples
            self.carry.age = self.carry.age + 1
        return plan, pool_metas, pool
