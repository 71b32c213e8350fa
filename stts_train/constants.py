"""Codes shared by data, model, pruners and tests; the lowest layer (imports only the stdlib).

`pipelines` may not import `stts_train`, so `pipelines/schema.py` keeps its own copy of the
visual codes (`MODALITY_IMAGE`, `MODALITY_VIDEO`); `tests/test_constants.py` checks that both
agree.
"""

from __future__ import annotations

from enum import IntEnum


class Modality(IntEnum):
    """What a sample or visual item is (`MicroBatch.item_modality_I`, `SampleMeta.modalities`).

    An IntEnum, so tensors, JSON and shard records hold the plain integers.
    """

    TEXT = 0
    """A sample without visual items (never appears as an item's modality)."""
    IMAGE = 1
    """One frame; never pruned (a one-frame video is labelled an image)."""
    VIDEO = 2
    """Two or more frames; STTS and the training-free pruners act only on these."""
    MULTI_IMAGE = 3
    """Several images or crops in one item; counted like an image (one frame per crop, never
    pruned)."""


IGNORE_INDEX = -100
"""Label of a position without loss (the `ignore_index` of `torch.nn.functional.cross_entropy`)."""
