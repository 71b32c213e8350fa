"""Samples and micro-batches built from token lists or of a chosen shape (tests, benchmarks).

    batch = make_batch(cfg, [[(Modality.VIDEO, 5), (Modality.IMAGE, 1)], [(Modality.VIDEO, 3)]])
    sample = make_sample(cfg, "a", [(Modality.VIDEO, 3)], prompt=4, answer=3, seed=0)

A made sample follows the layout of `stts_train/data/template.py` with random text: `prompt`
tokens, then every visual item (an image: image start, G placeholders, image end; a video, per
frame: a timestamp stand-in, frame start, G placeholders, frame end), then `answer` tokens that
carry the loss (label[i] is token i+1 over the answer). Rows are packed by `collate_row`, the
collator training uses, so a made batch has exactly the training layout.

Shape legend: F frames, N patches per frame, C patch values, G groups per frame.
"""

from __future__ import annotations

import torch

from stts_train.config.model import ModelConfig
from stts_train.constants import IGNORE_INDEX, Modality
from stts_train.data.batch import MicroBatch
from stts_train.data.collate import TokenizedSample, collate_row
from stts_train.data.lengths import SampleMeta

Items = list[tuple[int, int]]
"""Visual items of one sample as (modality, frames)."""


def sample_from_tokens(
    cfg: ModelConfig,
    key: str,
    ids: list[int] | torch.Tensor,
    items: Items,
    pixels_FNC: list[torch.Tensor],
    labels: list[int] | torch.Tensor | None = None,
) -> TokenizedSample:
    """A TokenizedSample whose metadata is counted from its tokens (labels default: no loss)."""
    ids_t = torch.as_tensor(ids, dtype=torch.long)
    if labels is None:
        labels_t = torch.full_like(ids_t, IGNORE_INDEX)
    else:
        labels_t = torch.as_tensor(labels, dtype=torch.long)
    num_placeholders = int((ids_t == cfg.tokens.image_patch_id).sum())
    items = [(int(m), int(n)) for m, n in items]  # plain ints in metadata, states and logs
    meta = SampleMeta(
        key=key,
        modalities=tuple(m for m, _ in items),
        frames=tuple(n for _, n in items),
        num_text_tokens=ids_t.numel() - num_placeholders,
        num_loss_tokens=int((labels_t != IGNORE_INDEX).sum()),
    )
    return TokenizedSample(
        key=key,
        input_ids=ids_t,
        labels=labels_t,
        pixels_FNC=list(pixels_FNC),
        item_frames=[n for _, n in items],
        item_modality=[m for m, _ in items],
        meta=meta,
    )


def make_sample(
    cfg: ModelConfig,
    key: str,
    items: Items,
    prompt: int = 3,
    answer: int = 3,
    seed: int | torch.Generator = 0,
    pixels_FNC: list[torch.Tensor] | None = None,
) -> TokenizedSample:
    """One sample of `prompt` + visual items + `answer` tokens (module docstring); random text
    and, unless `pixels_FNC` gives one (frames, N, C) tensor per item, random pixels."""
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    tok, groups = cfg.tokens, cfg.groups_per_frame
    high = min(cfg.llm.vocab_size, 1000)  # 0 and 1 are pad/eos in small vocabularies

    def text(n: int) -> list[int]:
        return torch.randint(2, high, (n,), generator=gen).tolist()

    ids = text(prompt)
    for modality, frames in items:
        if modality == Modality.VIDEO:
            for _ in range(frames):
                ids += text(1) + [tok.frame_start_id] + [tok.image_patch_id] * groups
                ids += [tok.frame_end_id]
        else:
            crop = [tok.image_start_id] + [tok.image_patch_id] * groups + [tok.image_end_id]
            ids += crop * frames
    if not ids and answer:
        raise ValueError(
            f"sample {key!r}: the first answer token needs a token before it; give prompt >= 1"
        )
    answer_start = len(ids)
    ids += text(answer)
    labels = [IGNORE_INDEX] * len(ids)
    labels[answer_start - 1 : len(ids) - 1] = ids[answer_start:]
    if pixels_FNC is None:
        n, c = cfg.vit.num_patches, cfg.vit.patch_dim
        pixels_FNC = [torch.randn(frames, n, c, generator=gen) for _, frames in items]
    return sample_from_tokens(cfg, key, ids, items, pixels_FNC, labels)


def make_batch(
    cfg: ModelConfig,
    samples: list[Items],
    seed: int = 0,
    pixels_FNC: torch.Tensor | None = None,
    prompt: int = 3,
    answer: int = 3,
) -> MicroBatch:
    """One row of samples `s0, s1, ...`, each a list of (modality, frames) items; `pixels_FNC`
    (every item's frames, in order) replaces the random pixels."""
    gen = torch.Generator().manual_seed(seed)
    frames = [n for items in samples for _, n in items]
    if pixels_FNC is not None and pixels_FNC.shape[0] != sum(frames):
        raise ValueError(
            f"pixels_FNC has {pixels_FNC.shape[0]} frames but the items have {sum(frames)}; "
            "pass every item's frames, item after item"
        )
    per_item = None if pixels_FNC is None else list(torch.split(pixels_FNC, frames))
    made = []
    for s, items in enumerate(samples):
        mine = None if per_item is None else [per_item.pop(0) for _ in items]
        made.append(make_sample(cfg, f"s{s}", items, prompt, answer, gen, mine))
    return collate_row(made, cfg)
