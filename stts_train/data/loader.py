"""Real-data source for the trainer: WebDataset stream -> chat template -> planner -> micro-batches.

Each data-parallel rank reads and decodes its own share of the dataset (`pipelines.stream`) and
tokenizes every sample with Molmo2's video layout. A window is `packing.window_size` samples per
rank. The ranks all-gather the window's metadata, plan the union with the balanced planner (the
same plan on every rank: near-equal modelled ViT and LLM cost per rank, every row within the LLM
token and ViT patch budgets, every sample placed exactly once, `plan_closed_window`). A sample stays
on the rank that decoded it whenever that rank has room for it within the balance tolerance
(`packing.prefer_home_rank`), near-equal samples planned on each other's ranks are swapped back,
and only the rest is sent point to point (`stts_train.data.exchange`). Every rank then has the
same number of rows for the window; every step takes `train.micro_batches_per_step` rows on every
rank, so ranks stay in lockstep (a row a rank has no samples for becomes a one-token padding row
without loss).

Exact resume: a rank's state is (its stream state at the start of the current window, rows of that
window already consumed). Restoring re-reads every rank's window, re-plans it (planning is
deterministic) and skips the consumed rows, so the sample stream replays exactly.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np

from stts_train.config import JobConfig
from stts_train.data.batch import MicroBatch
from stts_train.data.collate import TokenizedSample, collate_row, padding_row
from stts_train.data.cost import CostModel
from stts_train.data.exchange import SampleExchange
from stts_train.data.planner import PoolArrays, assign_window
from stts_train.data.template import tokenize_sample
from stts_train.errors import DataError

STATE_VERSION = 2


def decode_spec(job: JobConfig):
    """How the pipeline decodes frames for this model (size, normalisation, frame sampling)."""
    from pipelines.schema import DecodeSpec

    v, d = job.model.vit, job.data
    return DecodeSpec(
        image_size=v.image_size,
        patch_size=v.patch_size,
        mean=tuple(v.image_mean),
        std=tuple(v.image_std),
        max_frames=d.max_frames,
        max_fps=d.max_fps,
        seed=d.seed,
    )


class PipelineSource:
    """The trainer's `DataSource` over a built dataset (see the module docstring).

    Args:
        job: the job config (`data`, `packing`, `model`, `train.micro_batches_per_step`).
        dp_rank, dp_size: this rank's data-parallel position.
        tokenizer: default `load_tokenizer(job.model)`.
        group: the data-parallel process group (None: the default group); used when dp_size > 1.
    """

    can_reshard = False
    """Resuming at another data-parallel size is refused: each rank's state pins its share of a
    planned window. (The stream itself can reshard: `pipelines.stream.combine_states`.)"""

    def __init__(
        self, job: JobConfig, dp_rank: int, dp_size: int, tokenizer=None, group=None
    ) -> None:
        from stts_train.models.tokenizer import load_tokenizer

        self.job = job
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.exchange = SampleExchange(group, dp_rank, dp_size) if dp_size > 1 else None
        self.tokenizer = tokenizer or load_tokenizer(job.model)
        self.rows_per_step = job.train.micro_batches_per_step
        self.cost = CostModel(job.model)
        self.stream = None
        self.exhausted = False
        self.window_state: dict | None = None
        self.rows: list[list[TokenizedSample]] = []
        self.consumed = 0
        self.window_stats: dict[str, float] = {}
        """Of the last planned window (the same on every rank; logged as data/<name>): modelled
        cost imbalance across ranks (max / mean - 1) and the fraction of samples moved to another
        rank."""
        from pipelines.storage import options_from_config
        from pipelines.stream import Dataset

        self.fingerprint = Dataset(job.data.path, options_from_config(job.data)).fingerprint

    # -- stream ---------------------------------------------------------------------------------
    def _open(self, state: dict | None) -> None:
        from pipelines.stream import open_stream

        if self.stream is not None:
            self.stream.close()
        self.stream = open_stream(
            self.job.data, decode_spec(self.job), self.dp_rank, self.dp_size, state
        )
        self.exhausted = False

    def _read_local(self) -> list[TokenizedSample]:
        samples: list[TokenizedSample] = []
        while len(samples) < self.job.packing.window_size and not self.exhausted:
            try:
                decoded = next(self.stream)
            except StopIteration:
                self.exhausted = True  # a finite stream (data.num_epochs) ran out on this rank
                break
            samples.append(tokenize_sample(decoded, self.tokenizer, self.job.model))
        return samples

    def _next_window(self) -> None:
        if self.stream is None:
            self._open(None)
        self.window_state = copy.deepcopy(self.stream.state_dict())
        local = self._read_local()
        local_metas = [s.meta for s in local]
        per_rank_metas = (
            [local_metas] if self.exchange is None else self.exchange.all_gather(local_metas)
        )
        metas = [m for rank in per_rank_metas for m in rank]
        home = [r for r, rank in enumerate(per_rank_metas) for _ in rank]
        if not metas:
            raise DataError(
                f"dataset {self.job.data.path} is exhausted after "
                f"data.num_epochs={self.job.data.num_epochs}; lower train.num_steps or raise "
                "data.num_epochs (null streams endlessly)"
            )
        pool = PoolArrays.from_metas(metas, self.cost)
        ranks = assign_window(pool, home, self.dp_size, self.job.packing)
        first = sum(len(rank) for rank in per_rank_metas[: self.dp_rank])  # pool index of local[0]
        self.rows = self._collect_rows(
            ranks, {first + j: s for j, s in enumerate(local)}, metas, home
        )
        self.consumed = 0
        rank_cost = np.array(
            [
                sum(float(pool.llm_cost[i] + pool.vit_cost[i]) for row in rank for i in row)
                for rank in ranks
            ]
        )
        moved = sum(1 for r, rank in enumerate(ranks) for row in rank for i in row if home[i] != r)
        self.window_stats = {
            "planned_imbalance": float(rank_cost.max() / rank_cost.mean() - 1.0)
            if rank_cost.mean() > 0
            else 0.0,
            "moved_fraction": moved / len(metas),
        }

    def _collect_rows(
        self,
        ranks: list[list[list[int]]],
        held: dict[int, TokenizedSample],
        metas: list,
        home: list[int],
    ) -> list[list[TokenizedSample]]:
        """Send the samples this rank holds to the ranks planned for them; receive this rank's."""
        mine = {i for row in ranks[self.dp_rank] for i in row}
        have = {i: s for i, s in held.items() if i in mine}
        if self.exchange is not None:
            # per destination, by pool index (the receiver derives the same order)
            outbox = {
                r: [held[i] for i in sorted(i for row in rank for i in row if i in held)]
                for r, rank in enumerate(ranks)
                if r != self.dp_rank
            }
            for src, received in self.exchange.exchange(outbox).items():
                expected = sorted(i for i in mine if home[i] == src)
                if [s.key for s in received] != [metas[i].key for i in expected]:
                    raise RuntimeError(f"data-parallel rank {src} sent samples out of plan")
                have.update(zip(expected, received))
        missing = sorted(mine - have.keys())
        if missing:
            raise RuntimeError(
                f"data-parallel rank {self.dp_rank} did not receive planned samples {missing[:5]}"
            )
        return [[have[i] for i in row] for row in ranks[self.dp_rank]]

    # -- trainer interface ------------------------------------------------------------------------
    def next_microbatches(self, step: int) -> list[MicroBatch]:
        out = []
        while len(out) < self.rows_per_step:
            if self.consumed >= len(self.rows):
                self._next_window()
                continue
            row = self.rows[self.consumed]
            self.consumed += 1
            out.append(collate_row(row, self.job.model) if row else padding_row(self.job.model))
        return out

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "kind": "pipeline",
            "dp_size": self.dp_size,
            "window_state": self.window_state,
            "consumed": self.consumed,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION or state.get("kind") != "pipeline":
            raise ValueError(f"not a pipeline data state (version {STATE_VERSION}): {state}")
        if state["window_state"] is None:  # saved before the first window (same on every rank)
            return
        self._open(state["window_state"])
        self._next_window()
        self.consumed = int(state["consumed"])

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None


def eval_stream(job: JobConfig, path: str | None = None, max_frames: int | None = None):
    """One pass over a dataset in a fixed order, decoded in-process (for evaluation)."""
    from pipelines.stream import open_stream

    data = replace(
        job.data, path=path or job.data.path, num_epochs=1, loader="sync", shuffle_buffer=1
    )
    if max_frames:
        data = replace(data, max_frames=max_frames)
    spec = decode_spec(replace(job, data=data))
    return open_stream(data, spec, 0, 1, None)
