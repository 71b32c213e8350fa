"""The benchmark's planners: the balanced planner's streaming mode and the baselines it is
measured against (`stts-train bench packing`). Training never calls these (it plans closed
windows, `stts_train.data.planner`).

Algorithms (`plan_window`; every one returns a `Plan` and gives each rank the same number of
rows; rows that would make the count uneven are carried over, never dropped):

- `balanced` (ours, `stts_train.data.planner.plan_balanced`) in streaming mode: a sample that
  fits no row within the balance tolerance is carried into the next window; a sample carried
  `max_carry_windows` times goes first and only needs the budgets. Balance needs every rank's
  share of the window to be at least the largest sample (one 256-frame video costs more than 8
  average samples): when the pool is too small for that (`largest_share`), the planner emits no
  rows and carries the whole pool into the next window (a step is sized in work, not in
  samples; waiting does not age samples; `flush=True` at the end of the stream).
- `pad_to_longest`: stream order, each micro-batch padded to its longest sample (LLM) and its
  largest frame count (ViT), micro-batches dealt round-robin to ranks.
- `ffd`: first-fit-decreasing packing by LLM tokens under both budgets, then packs dealt
  round-robin to ranks (pack-then-assign, as Megatron-LM / torchtitan).
- `knapsack`: Molmo2's dynamic packer: a buffer of `knapsack_buffer` samples, a 0/1 knapsack
  per row over (quantised LLM tokens, frames) maximising tokens + w * frames, rows dealt
  round-robin to ranks.

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

from dataclasses import dataclass

import numpy as np

from stts_train.config.packing import PackingConfig
from stts_train.data.cost import CostModel
from stts_train.data.lengths import SampleMeta
from stts_train.data.planner import Plan, PoolArrays, check_sizes, plan_balanced

ALGORITHMS = ("balanced", "pad_to_longest", "ffd", "knapsack")
PADDED = "pad_to_longest"
"""The one algorithm whose rows are padded to their longest sample instead of packed varlen."""


@dataclass(frozen=True, kw_only=True)
class PlannerOptions:
    """Knobs that only the benchmark's planners read (training's are `PackingConfig`)."""

    largest_share: float = 1.0
    """Streaming balanced planner: the largest sample may take at most this share of a row's
    target (so the rest of its row can still level the other stage); a smaller window waits."""
    max_carry_windows: int = 2
    """Streaming: a sample carried over this many windows is placed first (never starved)."""
    knapsack_buffer: int = 48
    """Molmo2 knapsack baseline: examples in the solver buffer (Molmo2 SFT: 48)."""
    knapsack_image_weight: float = 30.0
    """Molmo2 knapsack baseline: objective weight of one frame vs one token (Molmo2 SFT: 30)."""
    knapsack_token_steps: int = 512
    """Molmo2 knapsack baseline: the LLM budget is quantised into this many steps."""
    knapsack_frame_steps: int = 128
    """Molmo2 knapsack baseline: the frame budget is quantised into at most this many steps
    (Molmo2 counts a handful of crops; video frames need quantising to keep the solver fast)."""
    pad_micro_batch_size: int = 0
    """pad_to_longest baseline: samples per micro-batch; 0 = as many as fit when padded."""

    def __post_init__(self) -> None:
        for name in (
            "max_carry_windows",
            "knapsack_buffer",
            "knapsack_token_steps",
            "knapsack_frame_steps",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"PlannerOptions.{name}={getattr(self, name)} must be >= 1")
        if not 0.0 < self.largest_share <= 1.0:
            raise ValueError(f"PlannerOptions.largest_share={self.largest_share} must be in (0, 1]")
        if self.pad_micro_batch_size < 0:
            raise ValueError(
                f"PlannerOptions.pad_micro_batch_size={self.pad_micro_batch_size} must be >= 0 "
                "(0 = as many as fit)"
            )


def _deal(rows: list[list[int]], num_ranks: int) -> tuple[list[list[list[int]]], list[int]]:
    """Round-robin rows to ranks (row k -> rank k % R); rows beyond a full round are carried."""
    usable = (len(rows) // num_ranks) * num_ranks
    ranks: list[list[list[int]]] = [[] for _ in range(num_ranks)]
    for k in range(usable):
        ranks[k % num_ranks].append(sorted(rows[k]))
    carried = sorted(i for row in rows[usable:] for i in row)
    return ranks, carried


def plan_pad_to_longest(
    pool: PoolArrays,
    num_ranks: int,
    cfg: PackingConfig,
    patches_per_frame: int,
    opts: PlannerOptions,
) -> Plan:
    check_sizes(pool, cfg)
    rows: list[list[int]] = []
    cur: list[int] = []
    max_tok = max_frames = 0
    cap_b = opts.pad_micro_batch_size or 1 << 30
    for i in range(len(pool)):
        t, f = int(pool.llm_tokens[i]), int(pool.frames[i])
        nt, nf = max(max_tok, t), max(max_frames, f)
        b = len(cur) + 1
        if cur and (
            b > cap_b
            or b * nt > cfg.max_llm_tokens
            or b * nf * patches_per_frame > cfg.max_vit_patches
        ):
            rows.append(cur)
            cur, nt, nf = [], t, f
        cur.append(i)
        max_tok, max_frames = nt, nf
    if cur:
        rows.append(cur)
    ranks, carried = _deal(rows, num_ranks)
    return Plan(PADDED, ranks, carried)


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


def _knapsack_row(
    weights_q: np.ndarray, frames: np.ndarray, values: np.ndarray, cap_q: int, cap_f: int
) -> list[int]:
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


def plan_knapsack(
    pool: PoolArrays,
    num_ranks: int,
    cfg: PackingConfig,
    patches_per_frame: int,
    opts: PlannerOptions,
) -> Plan:
    check_sizes(pool, cfg)
    steps = opts.knapsack_token_steps
    max_frames = cfg.max_vit_patches // patches_per_frame
    cap_f = min(max_frames, opts.knapsack_frame_steps)
    # Sizes rounded up to their quantum, so a chosen row never exceeds either budget.
    weights_q = np.ceil(pool.llm_tokens * steps / cfg.max_llm_tokens).astype(np.int64)
    frames_q = np.ceil(pool.frames * cap_f / max_frames).astype(np.int64)
    values = pool.llm_tokens + opts.knapsack_image_weight * pool.frames
    stream = list(range(len(pool)))
    buffer: list[int] = []
    pos = 0
    rows: list[list[int]] = []
    while True:
        while len(buffer) < opts.knapsack_buffer and pos < len(stream):
            buffer.append(stream[pos])
            pos += 1
        if pos >= len(stream) and len(buffer) < opts.knapsack_buffer:
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


def plan_window(
    pool: PoolArrays,
    num_ranks: int,
    cfg: PackingConfig,
    patches_per_frame: int,
    algorithm: str = "balanced",
    flush: bool = False,
    options: PlannerOptions | None = None,
    ages: np.ndarray | None = None,
) -> Plan:
    """One window's plan by `algorithm`; `ages` (balanced): windows each sample was carried
    (default 0); `flush`: the end of the stream (the balanced planner does not wait)."""
    opts = options or PlannerOptions()
    if num_ranks < 1:
        raise ValueError(f"data-parallel size must be >= 1, got {num_ranks}")
    if algorithm == "balanced":
        age = np.zeros(len(pool), np.int64) if ages is None else np.asarray(ages)
        wait = None if flush else opts.largest_share
        forced = age >= opts.max_carry_windows
        return plan_balanced(pool, num_ranks, cfg, forced=forced, wait_share=wait)
    if algorithm == "pad_to_longest":
        return plan_pad_to_longest(pool, num_ranks, cfg, patches_per_frame, opts)
    if algorithm == "ffd":
        return plan_ffd(pool, num_ranks, cfg)
    if algorithm == "knapsack":
        return plan_knapsack(pool, num_ranks, cfg, patches_per_frame, opts)
    raise ValueError(f"algorithm={algorithm!r} is not one of {list(ALGORITHMS)}")


def plan_metrics(
    plan: Plan, pool: PoolArrays, cost: CostModel, cfg: PackingConfig
) -> dict[str, float] | None:
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
    padded = plan.algorithm == PADDED
    pad_frame = cost.padding_frame_cost() if padded else 0.0
    ppf = cost.geom.patches_per_frame
    for r, rows in enumerate(plan.ranks):
        for j, row in enumerate(rows):
            idx = np.asarray(row, np.int64)
            real_llm[r, j] = pool.llm_cost[idx].sum()
            real_vit[r, j] = pool.vit_cost[idx].sum()
            tok[r, j] = pool.llm_tokens[idx].sum()
            pat[r, j] = pool.vit_patches[idx].sum()
            paid_llm[r, j], paid_vit[r, j], paid_tok[r, j], paid_pat[r, j] = (
                real_llm[r, j],
                real_vit[r, j],
                tok[r, j],
                pat[r, j],
            )
            if padded and idx.size:
                lens = pool.llm_tokens[idx]
                pad_frames = idx.size * int(pool.frames[idx].max()) - int(pool.frames[idx].sum())
                paid_llm[r, j] += (
                    idx.size * cost.llm_cost_of_length(float(lens.max()))
                    - cost.llm_cost_of_length(lens.astype(float)).sum()
                )
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

    def __init__(
        self,
        cfg: PackingConfig,
        cost: CostModel,
        num_ranks: int,
        algorithm: str = "balanced",
        options: PlannerOptions | None = None,
    ) -> None:
        self.cfg, self.cost, self.num_ranks = cfg, cost, num_ranks
        self.algorithm, self.options = algorithm, options or PlannerOptions()
        self.carry_metas: list[SampleMeta] = []
        self.carry = PoolArrays.from_metas([], cost)
        self.carry_age = np.zeros(0, np.int64)
        """Windows each carried sample has already been carried over."""

    def plan(
        self, new: list[SampleMeta], new_arrays: PoolArrays | None = None, flush: bool = False
    ) -> tuple[Plan, list[SampleMeta], PoolArrays]:
        """Plan carry + `new`; returns (plan, pool metas, pool arrays), plan indices into the pool.
        A plan may have no rows (the balanced planner waits for a window large enough to balance);
        pass `flush=True` at the end of the stream."""
        arrays = new_arrays if new_arrays is not None else PoolArrays.from_metas(new, self.cost)
        pool_metas = self.carry_metas + list(new)
        pool = PoolArrays.concat([self.carry, arrays])
        ages = np.concatenate([self.carry_age, np.zeros(len(arrays), np.int64)])
        ppf = self.cost.geom.patches_per_frame
        plan = plan_window(
            pool, self.num_ranks, self.cfg, ppf, self.algorithm, flush, self.options, ages
        )
        self.carry_metas = [pool_metas[i] for i in plan.carried_over]
        self.carry = pool.take(plan.carried_over)
        self.carry_age = ages[plan.carried_over]
        if plan.rows_per_rank:  # waiting for a larger window does not age samples
            self.carry_age = self.carry_age + 1
        return plan, pool_metas, pool
