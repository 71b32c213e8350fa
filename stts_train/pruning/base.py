"""One interface for every video-token pruner (docs/pruners.md#interface).

A pruner sees one video at a time at its pruning point and returns the tokens it keeps (or
merges), each tagged with the frame and grid position it stands for, so that the LLM layout, the
sequence packer and varlen attention can consume any pruner's output unchanged.

Shape legend (suffixes of tensor names; AGENTS.md#shape-legend):
    T  frames of the video
    N  cells per frame of the pruning grid (rows * cols; in the model, the connector's groups)
    D  feature width at the pruning point
    M  output tokens of a pruner
  local to the pruner interface:
    K  key width (VisionZip keys, head-averaged)
    G  width of the per-frame global feature (FastVID)
    W  HoliTom windows (``windows_W2``: first and last frame)

Registry names (``available_pruners()``):
    random, visionzip, fastvid, holitom, stop_visionzip, stop_fastvid, stop_holitom,
    stts_heuristic, stts_easy  -- built by ``get_pruner(name, **params)``;
    stts                       -- the learned STTS scorer. It lives inside the model (``model.stts``
                                  config) because it needs ViT internals and trains with the model;
                                  ``get_pruner("stts")`` raises an error that says so.

Map: docs/pruners.md; golden conformance: stts_train/conformance/pruners.py.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from stts_train.errors import ConfigError, LayoutError

KIND_COPY = 0  # unchanged copy of features_TND[frame, position]
KIND_MERGED = 1  # merged contextual (VisionZip) or anchor (FastVID) token
KIND_STATIC = 2  # HoliTom static temporal-cluster token (frame = first frame of its window)


@dataclass(frozen=True)
class Grid:
    """Per-frame token grid: position p = row * cols + col (row-major)."""

    rows: int
    cols: int

    @property
    def n(self) -> int:
        return self.rows * self.cols


@dataclass
class PrunerInput:
    """One video at the pruning point.

    features_TND: token features (projected, pooled visual embeddings), frame-major.
    attention_TN: attention each token *receives* in the last vision layer (mean over heads and
        queries, pooled like the features); SigLIP has no CLS token. Required by every
        attention-ranked pruner (VisionZip, FastVID, HoliTom, SToP variants).
    grid: the per-frame grid; rows * cols must equal N.
    keep_ratio: the budget as the retained fraction. ``None`` means "use the budget the pruner was
        built with" (e.g. VisionZip's ``budget_per_frame``, FastVID/HoliTom ``retain_ratio``).
    keys_TNK: VisionZip only: head-averaged keys of the same layer (contextual assignment).
    global_features_TG: FastVID only: one global feature per frame (segmentation).
    noise: density-peak noise tensors in drawing order (see ``dpc.NoiseSource``); consumed
        instead of drawing. ``None`` draws from ``generator``.
    generator: randomness for this video (random pruner draws, DPC noise when ``noise`` is None).
        ``None`` means a fresh generator seeded with the pruner's ``seed``: results never depend on
        the global RNG nor on other videos in the batch.
    """

    features_TND: Tensor
    attention_TN: Tensor | None = None
    grid: Grid | None = None
    keep_ratio: float | None = None
    keys_TNK: Tensor | None = None
    global_features_TG: Tensor | None = None
    noise: Sequence[Tensor] | None = None
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        x = self.features_TND
        if not isinstance(x, Tensor) or x.dim() != 3:
            raise LayoutError(
                f"PrunerInput.features_TND must be a (T, N, D) tensor, found "
                f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}; pass one video "
                "at a time (use prune_batch for several)"
            )
        T, N, _ = x.shape
        if T < 1 or N < 1:
            raise LayoutError(f"PrunerInput.features_TND has an empty dimension: {tuple(x.shape)}")
        if self.grid is None:
            side = math.isqrt(N)
            if side * side != N:
                raise LayoutError(
                    f"PrunerInput.grid is missing and N={N} tokens per frame is not a square; "
                    "pass grid=Grid(rows, cols)"
                )
            self.grid = Grid(side, side)
        if self.grid.n != N:
            raise LayoutError(
                f"PrunerInput.grid {self.grid.rows}x{self.grid.cols}={self.grid.n} does not match "
                f"features_TND with N={N} tokens per frame; fix the grid or the features"
            )
        if self.attention_TN is not None and tuple(self.attention_TN.shape) != (T, N):
            raise LayoutError(
                f"PrunerInput.attention_TN has shape {tuple(self.attention_TN.shape)}, expected "
                f"(T, N)=({T}, {N}) to match features_TND"
            )
        if self.keys_TNK is not None and tuple(self.keys_TNK.shape[:2]) != (T, N):
            raise LayoutError(
                f"PrunerInput.keys_TNK has shape {tuple(self.keys_TNK.shape)}, expected "
                f"({T}, {N}, K) to match features_TND"
            )
        if self.global_features_TG is not None and (
            self.global_features_TG.dim() != 2 or self.global_features_TG.shape[0] != T
        ):
            raise LayoutError(
                f"PrunerInput.global_features_TG has shape {tuple(self.global_features_TG.shape)}, "
                f"expected ({T}, G)"
            )
        if self.keep_ratio is not None and not 0.0 < self.keep_ratio <= 1.0:
            raise LayoutError(f"PrunerInput.keep_ratio={self.keep_ratio} must be in (0, 1]")

    @property
    def num_frames(self) -> int:
        return self.features_TND.shape[0]

    @property
    def tokens_per_frame(self) -> int:
        return self.features_TND.shape[1]

    def require_attention(self, method: str) -> Tensor:
        if self.attention_TN is None:
            raise LayoutError(
                f"{method} ranks tokens by attention: pass PrunerInput.attention_TN (T, N), the "
                "attention each token receives in the last vision layer (mean over heads/queries)"
            )
        return self.attention_TN


@dataclass
class PrunerOutput:
    """Kept or merged tokens of one video, in the method's output order.

    features_MD: output tokens.
    frame_M, position_M: the frame and grid position each token stands for (merged tokens: their
        target/anchor/centre; HoliTom static tokens: the first frame of their window).
    kind_M: KIND_COPY / KIND_MERGED / KIND_STATIC.
    diagnostics: optional extra tensors (``sink_score_N``, ``windows_W2``, ``segment_sizes_S``,
        ``context_budget_T``, ...), for debugging and conformance.
    """

    features_MD: Tensor
    frame_M: Tensor
    position_M: Tensor
    kind_M: Tensor
    diagnostics: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        M = self.features_MD.shape[0]
        for name in ("frame_M", "position_M", "kind_M"):
            t = getattr(self, name)
            if t.shape != (M,):
                raise LayoutError(
                    f"PrunerOutput.{name} has shape {tuple(t.shape)}, expected ({M},)"
                )

    @property
    def num_tokens(self) -> int:
        return self.features_MD.shape[0]

    def flat_index_M(self, tokens_per_frame: int) -> Tensor:
        """frame * N + position: the token's index in the unpruned frame-major sequence."""
        return self.frame_M * tokens_per_frame + self.position_M

    def sorted_by_frame_position(self) -> PrunerOutput:
        """Stable re-order by (frame, position, output order); what a per-frame layout needs."""
        order = torch.argsort(self.position_M, stable=True)
        order = order[torch.argsort(self.frame_M[order], stable=True)]
        return PrunerOutput(
            self.features_MD[order],
            self.frame_M[order],
            self.position_M[order],
            self.kind_M[order],
            dict(self.diagnostics),
        )

    def tokens_per_frame_T(self, num_frames: int) -> Tensor:
        """Output tokens attributed to each frame (for cu_seqlens / per-frame layouts)."""
        return torch.bincount(self.frame_M, minlength=num_frames)


@runtime_checkable
class TokenPruner(Protocol):
    """A training-free pruner: one video in, its kept/merged tokens out."""

    name: str

    def __call__(self, video: PrunerInput) -> PrunerOutput: ...

    def prune_batch(self, videos: Sequence[PrunerInput]) -> list[PrunerOutput]: ...


class PrunerBase:
    """Shared plumbing: ``prune_batch`` runs each video on its own, so a video's result never
    depends on the other videos processed alongside it."""

    name: str = "?"

    def __call__(self, video: PrunerInput) -> PrunerOutput:
        if not isinstance(video, PrunerInput):
            raise LayoutError(
                f"{self.name} expects a PrunerInput, found {type(video).__name__}; wrap the "
                "tensors with stts_train.pruning.base.PrunerInput(features_TND=..., ...)"
            )
        return self.prune(video)

    def prune(self, video: PrunerInput) -> PrunerOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def prune_batch(self, videos: Sequence[PrunerInput]) -> list[PrunerOutput]:
        return [self(v) for v in videos]

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in sorted(vars(self).items()))
        return f"{type(self).__name__}({params})"


# name -> "module:Class" under stts_train.pruning.training_free (imported on first use)
_REGISTRY: dict[str, str] = {
    "random": "random_pruner:RandomPruner",
    "visionzip": "visionzip:VisionZipPruner",
    "stop_visionzip": "visionzip:StopVisionZipPruner",
    "fastvid": "fastvid:FastVIDPruner",
    "stop_fastvid": "fastvid:StopFastVIDPruner",
    "holitom": "holitom:HoliTomPruner",
    "stop_holitom": "holitom:StopHoliTomPruner",
    "stts_heuristic": "heuristics:STTSHeuristicPruner",
    "stts_easy": "heuristics:STTSEasyPruner",
}
_MODEL_INTERNAL = {
    "stts": (
        "the learned STTS pruner runs inside the model (it needs ViT block outputs and trains "
        "with the LLM loss); enable it with the model.stts config section instead of get_pruner"
    ),
}


def available_pruners() -> list[str]:
    """Every registry name, including the model-internal "stts"."""
    return sorted([*_REGISTRY, *_MODEL_INTERNAL])


def get_pruner(name: str, **params: object) -> TokenPruner:
    """Build a training-free pruner by registry name; ``params`` go to its constructor."""
    if name in _MODEL_INTERNAL:
        raise ConfigError(f"pruner '{name}': {_MODEL_INTERNAL[name]}")
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown pruner '{name}'; choose one of {', '.join(available_pruners())}"
        )
    module_name, cls_name = _REGISTRY[name].split(":")
    module = importlib.import_module(f"stts_train.pruning.training_free.{module_name}")
    cls = getattr(module, cls_name)
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"pruner '{name}': bad parameters {sorted(params)}: {exc}") from exc
