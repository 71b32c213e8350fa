"""Deterministic synthetic micro-batches: a pure function of (seed, global sample index).

Used by engine tests, the CPU bench and demos until (and besides) the real data stream. Each
sample is a video (2..max_frames frames), an image (1 frame) or text only; visual items emit,
per frame, a start marker, exactly G = groups_per_frame image-patch placeholders and an end
marker (the layout of `stts_train.data.batch`). Loss is on the answer text only.

Sharding: micro-batch chunks are numbered globally; data-parallel rank r of D reads chunks
`start + k * D + r` for k = 0, 1, ... Its state is {"start", "cursor"=k}. When every rank stands
at the same cursor the stream can reshard to a new D exactly (`reshard_states`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stts_train.config.engine import SyntheticConfig
from stts_train.config.model import ModelConfig
from stts_train.constants import IGNORE_INDEX, Modality
from stts_train.data.batch import MicroBatch
from stts_train.data.builders import sample_from_tokens
from stts_train.data.collate import TokenizedSample, collate_row

STATE_VERSION = 1


@dataclass(frozen=True)
class SampleSpec:
    """Override of the random draw for tests: force a modality and a frame count."""

    modality: int
    num_frames: int = 1


def _special_ids(model_cfg: ModelConfig) -> set[int]:
    t = model_cfg.tokens
    return {
        t.image_patch_id,
        t.frame_start_id,
        t.frame_end_id,
        t.image_start_id,
        t.image_end_id,
        t.low_res_image_start_id,
        t.image_col_id,
        t.pad_id,
        t.eos_id,
    }


def make_sample(
    model_cfg: ModelConfig,
    syn: SyntheticConfig,
    seed: int,
    index: int,
    spec: SampleSpec | None = None,
) -> TokenizedSample:
    """One sample; identical for identical (seed, index, spec)."""
    rng = np.random.default_rng([seed, index, 0x5775])
    specials = _special_ids(model_cfg)
    vocab = model_cfg.llm.vocab_size

    def text(n: int) -> list[int]:
        ids = rng.integers(0, vocab, size=n).tolist()
        return [i if i not in specials else (i + 1) % vocab for i in ids]

    if spec is None:
        choices = [Modality.VIDEO, Modality.IMAGE, Modality.TEXT]
        modality = int(rng.choice(choices, p=syn.modality_mix))
        frames = int(rng.integers(2, syn.max_frames + 1)) if modality == Modality.VIDEO else 1
    else:
        modality, frames = spec.modality, spec.num_frames
    n_prompt = int(rng.integers(syn.min_text_tokens, syn.max_text_tokens + 1))
    n_answer = int(rng.integers(syn.min_text_tokens, syn.max_text_tokens + 1))
    t = model_cfg.tokens
    ids: list[int] = text(n_prompt)
    G = model_cfg.groups_per_frame
    items, pixels = [], []
    if modality != Modality.TEXT:
        start, end = (
            (t.frame_start_id, t.frame_end_id)
            if modality == Modality.VIDEO
            else (t.image_start_id, t.image_end_id)
        )
        for _ in range(frames):
            ids += [start] + [t.image_patch_id] * G + [end]
        shape = (frames, model_cfg.vit.num_patches, model_cfg.vit.patch_dim)
        items.append((modality, frames))
        pixels.append(torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)))
    answer_start = len(ids)
    ids += text(n_answer) + [t.eos_id]
    # label[i] = token i+1, only where token i+1 is part of the answer
    labels = [IGNORE_INDEX] * (answer_start - 1) + ids[answer_start:] + [IGNORE_INDEX]
    return sample_from_tokens(model_cfg, f"syn-{index}", ids, items, pixels, labels)


class SyntheticSource:
    """Trainer data source: `micro_batches_per_step` synthetic micro-batches per step and rank.

    Args:
        model_cfg, syn: shapes and the sample distribution.
        seed: data seed.
        dp_rank, dp_size: this rank's data-parallel position (from ParallelDims).
        micro_batches_per_step: micro-batches returned per call.
        force: optional test override, SampleSpec per data-parallel rank (all its samples).
    """

    can_reshard = True

    def __init__(
        self,
        model_cfg: ModelConfig,
        syn: SyntheticConfig,
        seed: int,
        dp_rank: int,
        dp_size: int,
        micro_batches_per_step: int,
        force: dict[int, SampleSpec] | None = None,
    ) -> None:
        self.model_cfg, self.syn, self.seed = model_cfg, syn, seed
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.micro_batches_per_step = micro_batches_per_step
        self.force = (force or {}).get(dp_rank)
        self.start = 0
        self.cursor = 0

    @property
    def fingerprint(self) -> str:
        return f"{self.syn.fingerprint}:seed={self.seed}"

    def _chunk(self, k: int) -> MicroBatch:
        chunk = self.start + k * self.dp_size + self.dp_rank
        n = self.syn.samples_per_microbatch
        samples = [
            make_sample(self.model_cfg, self.syn, self.seed, chunk * n + j, self.force)
            for j in range(n)
        ]
        return collate_row(samples, self.model_cfg, validate=False)

    def next_microbatches(self, step: int) -> list[MicroBatch]:
        out = [self._chunk(self.cursor + m) for m in range(self.micro_batches_per_step)]
        self.cursor += self.micro_batches_per_step
        return out

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "kind": "synthetic",
            "start": self.start,
            "cursor": self.cursor,
            "dp_size": self.dp_size,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION or state.get("kind") != "synthetic":
            raise ValueError(f"not a synthetic data state (version {STATE_VERSION}): {state}")
        self.start, self.cursor = int(state["start"]), int(state["cursor"])

    @staticmethod
    def reshard_states(states: list[dict], new_dp_size: int) -> list[dict]:
        """Per-rank states for `new_dp_size` ranks continuing exactly after `states`."""
        cursors = {s["cursor"] for s in states}
        if len(cursors) != 1:
            raise ValueError(
                f"cannot reshard: data-parallel ranks stand at different cursors {cursors}"
            )
        consumed = states[0]["start"] + cursors.pop() * len(states)
        return [
            {
                "version": STATE_VERSION,
                "kind": "synthetic",
                "start": consumed,
                "cursor": 0,
                "dp_size": new_dp_size,
            }
            for _ in range(new_dp_size)
        ]
