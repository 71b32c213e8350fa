"""Decoded video QA samples -> token ids with Molmo2's video layout and a chat template.

Prompt layout (loss only on the answer and the closing <|im_end|>):

    <|im_start|>user\\n
      per frame: " {t:.1f} " <frame_start> G x <im_patch> <frame_end>      (Molmo2 layout)
    \\n{question}\\n{A. choice ...}<|im_end|>\\n<|im_start|>assistant\\n{answer}<|im_end|>

An image (one sampled frame) uses <im_start>/<im_end> around its placeholders and no timestamp.
The model drops the placeholders of pruned groups after the ViT, so the planner counts the
post-pruning length from `SampleMeta` alone.
"""

from __future__ import annotations

from typing import Protocol

import torch

from stts_train.config.model import ModelConfig
from stts_train.constants import IGNORE_INDEX, Modality
from stts_train.data.builders import sample_from_tokens
from stts_train.data.collate import TokenizedSample

CHOICE_LETTERS = "ABCDEFGHIJ"


class TextTokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...): ...  # returns an object with .ids


class SampleLike(Protocol):
    key: str
    pixels_FNC: torch.Tensor
    frame_times_s: list[float]
    modality: int
    question: str
    answer: str
    choices: list[str] | None


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False).ids)


def format_question(question: str, choices: list[str] | None) -> str:
    if not choices:
        return question
    lines = [question] + [f"{CHOICE_LETTERS[i]}. {c}" for i, c in enumerate(choices)]
    return "\n".join(lines) + "\nAnswer with the option's letter."


def visual_tokens(
    cfg: ModelConfig, tokenizer, modality: int, frame_times_s: list[float]
) -> list[int]:
    tok, groups = cfg.tokens, cfg.groups_per_frame
    ids: list[int] = []
    if modality == Modality.IMAGE:
        return [tok.image_start_id] + [tok.image_patch_id] * groups + [tok.image_end_id]
    for i, t in enumerate(frame_times_s):
        ids += _ids(tokenizer, f"{' ' if i else ''}{t:.1f} ")
        ids += [tok.frame_start_id] + [tok.image_patch_id] * groups + [tok.frame_end_id]
    return ids


def tokenize_sample(
    sample: SampleLike, tokenizer, cfg: ModelConfig, *, with_answer: bool = True
) -> TokenizedSample:
    """Token ids, labels (label[i] = target of position i) and metadata for one decoded sample."""
    im_start, im_end = _special(tokenizer, "<|im_start|>"), _special(tokenizer, "<|im_end|>")
    prompt = [im_start] + _ids(tokenizer, "user\n")
    modality = Modality.IMAGE if sample.modality == Modality.IMAGE else Modality.VIDEO
    prompt += visual_tokens(cfg, tokenizer, modality, sample.frame_times_s)
    prompt += _ids(tokenizer, "\n" + format_question(sample.question, sample.choices))
    prompt += [im_end] + _ids(tokenizer, "\n") + [im_start] + _ids(tokenizer, "assistant\n")
    answer = (_ids(tokenizer, sample.answer) + [im_end]) if with_answer else []
    ids = prompt + answer
    labels = [IGNORE_INDEX] * len(ids)
    # position i predicts token i+1: the last prompt token predicts the first answer token
    for i in range(len(prompt) - 1, len(ids) - 1):
        labels[i] = ids[i + 1]
    frames = int(sample.pixels_FNC.shape[0])
    items = [(modality, frames)]
    return sample_from_tokens(cfg, sample.key, ids, items, [sample.pixels_FNC], labels)


def _special(tokenizer, name: str) -> int:
    tid = tokenizer.token_to_id(name)
    if tid is None:
        raise ValueError(
            f"tokenizer has no {name} token; use stts_train.models.tokenizer.qwen_tokenizer()"
        )
    return int(tid)
