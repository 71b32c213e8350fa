"""Real-data source for the trainer: WebDataset stream -> chat template -> planner -> micro-batches.

Each data-parallel rank reads its own share of the dataset (`pipelines.stream`), tokenizes every
decoded sample with Molmo2's video layout, and packs a window of samples into rows under the
LLM-token and ViT-patch budgets with the planner (rank-local packing; every row holds whole
samples, nothing is dropped: a window is flushed completely before the next one is read).
Every step takes `train.micro_batches_per_step` rows on every rank, so ranks stay in lockstep.

Exact resume: the state is (stream state at the start of the current window, rows of that window
already consumed). Restoring re-reads the window, re-plans it (planning is deterministic) and
skips the consumed rows, so the sample stream replays exactly.
"""

from __future__ import annotations

import copy
from dataclasses import replace

from stts_train.config import JobConfig
from stts_train.data.batch import MicroBatch
from stts_train.data.collate import TokenizedSample, collate_row
from stts_train.data.cost import CostModel
from stts_train.data.planner import StreamingPlanner
from stts_train.data.template import tokenize_sample

STATE_VERSION = 1


def decode_spec(job: JobConfig):
    """How the pipeline decodes frames for this model (size, normalisation, frame sampling)."""
    from pipelines.schema import DecodeSpec

    v, d = job.model.vit, job.data
    return DecodeSpec(image_size=v.image_size, patch_size=v.patch_size, mean=tuple(v.image_mean),
                      std=tuple(v.image_std), max_frames=d.max_frames, max_fps=d.max_fps, seed=d.seed)


class PipelineSource:
    """The trainer's `DataSource` over a built dataset (see the module docstring)."""

    can_reshard = False
    """Resuming at another data-parallel size is refused: each rank's state pins a planned window
    of its own share. (The stream itself can reshard: `pipelines.stream.combine_states`.)"""

    def __init__(self, job: JobConfig, dp_rank: int, dp_size: int, tokenizer=None) -> None:
        from stts_train.models.tokenizer import load_tokenizer

        self.job = job
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.tokenizer = tokenizer or load_tokenizer(job.model)
        self.rows_per_step = job.train.micro_batches_per_step
        self.cost = CostModel(job.model)
        self.stream = None
        self.window_state: dict | None = None
        self.rows: list[list[TokenizedSample]] = []
        self.consumed = 0
        self.keys_seen: list[str] = []
        from pipelines.stream import Dataset
        from pipelines.storage import options_from_config

        self.fingerprint = Dataset(job.data.path, options_from_config(job.data)).fingerprint

    # -- stream ---------------------------------------------------------------------------------
    def _open(self, state: dict | None) -> None:
        from pipelines.stream import open_stream

        if self.stream is not None:
            self.stream.close()
        self.stream = open_stream(self.job.data, decode_spec(self.job), self.dp_rank, self.dp_size, state)

    def _next_window(self) -> None:
        if self.stream is None:
            self._open(None)
        self.window_state = copy.deepcopy(self.stream.state_dict())
        samples = [tokenize_sample(next(self.stream), self.tokenizer, self.job.model)
                   for _ in range(self.job.packing.window_size)]
        self.rows = self._plan(samples)
        self.consumed = 0

    def _plan(self, samples: list[TokenizedSample]) -> list[list[TokenizedSample]]:
        planner = StreamingPlanner(self.job.packing, self.cost, num_ranks=1)
        plan, metas, _ = planner.plan([s.meta for s in samples], flush=True)
        by_key = {s.key: s for s in samples}
        return [[by_key[metas[i].key] for i in row] for row in plan.ranks[0]]

    # -- trainer interface ------------------------------------------------------------------------
    def next_microbatches(self, step: int) -> list[MicroBatch]:
        out = []
        while len(out) < self.rows_per_step:
            if self.consumed >= len(self.rows):
                self._next_window()
                continue
            row = self.rows[self.consumed]
            self.consumed += 1
            self.keys_seen.extend(s.key for s in row)
            out.append(collate_row(row, self.job.model))
        return out

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "kind": "pipeline", "dp_size": self.dp_size,
                "window_state": self.window_state, "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION or state.get("kind") != "pipeline":
            raise ValueError(f"not a pipeline data state (version {STATE_VERSION}): {state}")
        if state["window_state"] is None:
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

    data = replace(job.data, path=path or job.data.path, num_epochs=1, loader="sync", shuffle_buffer=1)
    if max_frames:
        data = replace(data, max_frames=max_frames)
    spec = decode_spec(replace(job, data=data))
    return open_stream(data, spec, 0, 1, None)
